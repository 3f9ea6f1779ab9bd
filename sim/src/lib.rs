//! lendmesh-sim: runs whole groups on `lendmesh-protocol`'s state machines in virtual time (DESIGN §12).
//! Built in the simulator issue.
