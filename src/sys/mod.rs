//! What the broker tells about itself: Prometheus metrics over HTTP (`metrics.rs`). The
//! `$SYS/broker/...` topics are published by the shards (`shard/sys.rs`).

pub mod metrics;
