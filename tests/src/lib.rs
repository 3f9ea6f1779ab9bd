//! lendmesh-tests: integration tests that start real nodes on loopback (built with the node issue).
