//! Mosquitto databases laid out by hand, chunk by chunk, as the module's header describes:
//! for the tests here and the simulation's (`tests/simulation.rs`), which take them over on
//! a simulated disk. (A database written by Debian's Mosquitto itself is read in
//! `tests/broker_persistence_mosquitto.rs`.)

use super::MAGIC;

/// The file's header: Mosquitto's magic bytes, a CRC written as 0, the format version.
pub fn header(version: u32) -> Vec<u8> {
    let mut file = MAGIC.to_vec();
    file.extend(0u32.to_be_bytes()); // CRC, written as 0
    file.extend(version.to_be_bytes());
    file
}

/// Appends a chunk of `kind` holding `body`.
pub fn chunk(file: &mut Vec<u8>, kind: u32, body: &[u8]) {
    file.extend(kind.to_be_bytes());
    file.extend((body.len() as u32).to_be_bytes());
    file.extend(body);
}

/// A CONFIG chunk's body: store ids of 8 bytes.
pub fn config() -> Vec<u8> {
    let mut body = 99u64.to_le_bytes().to_vec();
    body.extend([1, 8, 0, 0, 0, 0, 0, 0]);
    body
}

/// A MESSAGE chunk's body: stored message `id`, published by client `pub` on port 1883.
/// `properties`: their length first, as Mosquitto stores them (none: empty).
pub fn message(
    id: u64,
    expiry_s: u64,
    topic: &str,
    payload: &[u8],
    qos: u8,
    properties: &[u8],
) -> Vec<u8> {
    let mut body = id.to_le_bytes().to_vec();
    body.extend(expiry_s.to_le_bytes());
    body.extend((payload.len() as u32).to_be_bytes());
    body.extend(7u16.to_be_bytes()); // the publisher's packet id
    body.extend(3u16.to_be_bytes()); // publisher's client id
    body.extend(0u16.to_be_bytes()); // no username
    body.extend((topic.len() as u16).to_be_bytes());
    body.extend(1883u16.to_be_bytes());
    body.extend([qos, 0]);
    body.extend(b"pub");
    body.extend(topic.as_bytes());
    body.extend(payload);
    body.extend(properties);
    body
}

/// A CLIENT chunk's body (format 6): client `id`, its session's expiry time and interval,
/// and its last packet id.
pub fn client(id: &str, expiry_time_s: u64, interval: u32, last_mid: u16) -> Vec<u8> {
    let mut body = expiry_time_s.to_le_bytes().to_vec();
    body.extend(interval.to_be_bytes());
    body.extend(last_mid.to_be_bytes());
    body.extend((id.len() as u16).to_be_bytes());
    body.extend(1883u16.to_be_bytes());
    body.extend(0u16.to_be_bytes());
    body.extend([0; 4]);
    body.extend(id.as_bytes());
    body
}

/// A CLIENT_MESSAGE chunk's body: stored message `store_id` in client `id`'s session as
/// packet `mid`, in `state` (`super::state`), outgoing or incoming.
pub fn client_message(
    id: &str,
    store_id: u64,
    mid: u16,
    qos: u8,
    state: u8,
    outgoing: bool,
    properties: &[u8],
) -> Vec<u8> {
    let mut body = store_id.to_le_bytes().to_vec();
    body.extend(mid.to_be_bytes());
    body.extend((id.len() as u16).to_be_bytes());
    body.extend([qos, state, 0, u8::from(outgoing)]);
    body.extend(id.as_bytes());
    body.extend(properties);
    body
}

/// A SUBSCRIPTION chunk's body: client `id`'s subscription to `filter`.
pub fn subscription(id: &str, filter: &str, qos: u8, options: u8, identifier: u32) -> Vec<u8> {
    let mut body = identifier.to_be_bytes().to_vec();
    body.extend((id.len() as u16).to_be_bytes());
    body.extend((filter.len() as u16).to_be_bytes());
    body.extend([qos, options, 0, 0]);
    body.extend(id.as_bytes());
    body.extend(filter.as_bytes());
    body
}
