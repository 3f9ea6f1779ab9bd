//! The `lendmesh` binary. The node itself is built in the node issue; for now this only reports its version.

fn main() {
    #[allow(clippy::print_stdout)]
    {
        println!(
            "lendmesh {} (node not yet implemented; see README)",
            env!("CARGO_PKG_VERSION")
        );
    }
}
