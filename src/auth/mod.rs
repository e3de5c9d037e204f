//! Authentication: Mosquitto password files (`password`), and the plumbing of MQTT 5.0
//! enhanced authentication (§4.12). A
//! method is a named challenge/response exchange; the broker runs it when a CONNECT names
//! it, and again when the client re-authenticates with AUTH 0x19. No method is built in yet:
//! a CONNECT naming an unknown method is refused with 0x8C.

pub mod acl;
pub mod password;

use bytes::Bytes;

use crate::codec::ReasonCode;

/// What an exchange says after each message from the client.
#[derive(Debug)]
pub enum AuthStep {
    /// Send AUTH 0x18 with this Authentication Data and wait for the client's answer.
    Continue(Option<Bytes>),
    /// Authenticated; the data goes to the client in CONNACK (or AUTH 0x00 on re-auth).
    Success(Option<Bytes>),
    /// Refused with this reason code (CONNACK, or DISCONNECT on re-authentication).
    Failure(ReasonCode),
}

/// An enhanced authentication method, such as SCRAM.
pub trait AuthMethod: Send + Sync + 'static {
    /// The Authentication Method name clients use.
    fn name(&self) -> &str;
    /// Starts an exchange for `client_id` with the Authentication Data of CONNECT (or of the
    /// AUTH 0x19 that asks to re-authenticate).
    fn begin(&self, client_id: &str, data: Option<&[u8]>) -> (Box<dyn AuthExchange>, AuthStep);
}

/// One exchange in progress: the method's state between the client's messages.
pub trait AuthExchange: Send {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}
