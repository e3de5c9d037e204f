//! midge: a thread-per-core MQTT broker. See `DESIGN.md` in the shared folder for the shape.

pub mod auth;
pub mod bridge;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod os;
pub mod persist;
pub mod retain;
pub mod router;
pub mod server;
pub mod session;
pub mod shard;
pub mod sys;
pub mod systemd;
pub mod tls;
pub mod topic;
pub mod types;
pub mod ws;
