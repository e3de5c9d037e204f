//! midge: a thread-per-core MQTT broker. See `DESIGN.md` in the shared folder for the shape.

pub mod codec;
pub mod topic;
