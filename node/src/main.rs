//! The `lendmesh` binary: parses the command line and runs it (the logic lives in the library).

fn main() -> std::process::ExitCode {
    lendmesh_node::cli::main()
}
