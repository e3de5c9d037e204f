//! MQTT 5.0 enhanced authentication on a connection (§4.12): AUTH exchanges before CONNACK
//! and re-authentication with AUTH 0x19.

use std::sync::Arc;

use super::io::{Backend, ConnId};
use super::Shard;
use crate::auth::{AuthExchange, AuthStep};
use crate::codec::{Auth, Packet, ReasonCode};

impl<B: Backend> Shard<B> {
    /// Acts on what an authentication exchange said: ask the client again, complete the
    /// CONNECT (or the re-authentication), or refuse.
    pub(super) fn auth_step(
        &mut self,
        conn: ConnId,
        exchange: Box<dyn AuthExchange>,
        step: AuthStep,
    ) {
        let Some(c) = self.conn_mut(conn) else { return };
        let method = c
            .auth_method()
            .map(|m| m.name().to_string())
            .unwrap_or_default();
        let extras = c.extras();
        let connecting = extras.auth_pending.is_some();
        let auth = |reason, data| {
            let mut packet = Auth::with_reason(reason);
            packet.properties.authentication_method = crate::codec::MqttStr::new(&method).ok();
            packet.properties.authentication_data = data;
            Packet::Auth(packet)
        };
        match step {
            AuthStep::Continue(data) => {
                extras.auth_exchange = Some(exchange);
                self.send_packet(conn, &auth(ReasonCode::ContinueAuthentication, data));
            }
            AuthStep::Success(data) if connecting => {
                let pending = extras.auth_pending.take().expect("connecting");
                extras.auth_reply = data;
                let (connect, client_id) = (pending.connect, pending.client_id);
                self.connect_authenticated(conn, connect, client_id, pending.assigned);
            }
            AuthStep::Success(data) => {
                self.send_packet(conn, &auth(ReasonCode::Success, data));
            }
            AuthStep::Failure(reason) if connecting => {
                let pending = extras.auth_pending.take().expect("connecting");
                self.refuse(conn, &pending.connect, reason);
            }
            AuthStep::Failure(reason) => {
                self.disconnect_with(conn, reason, "re-authentication failed")
            }
        }
    }

    /// AUTH from the client: the next step of an exchange, or a request to re-authenticate.
    pub(super) fn on_auth(&mut self, conn: ConnId, packet: Auth) {
        let Some(c) = self.conn_mut(conn) else { return };
        let Some(method) = c.auth_method().cloned() else {
            self.protocol_violation(conn, "AUTH without an authentication method");
            return;
        };
        // §4.12: the method stays the one CONNECT named.
        if packet.properties.authentication_method.as_deref() != Some(method.name()) {
            self.protocol_violation(conn, "AUTH with another authentication method");
            return;
        }
        let data = packet.properties.authentication_data.clone();
        match (packet.reason, c.extras().auth_exchange.take()) {
            (ReasonCode::ContinueAuthentication, Some(mut exchange)) => {
                let step = exchange.step(data.as_deref());
                self.auth_step(conn, exchange, step);
            }
            (ReasonCode::ReAuthenticate, None) if c.session.is_some() => {
                let client_id = c.client_id.clone().unwrap_or_else(|| Arc::from(""));
                let (exchange, step) = method.begin(&client_id, data.as_deref());
                self.auth_step(conn, exchange, step);
            }
            _ => self.protocol_violation(conn, "AUTH out of turn"),
        }
    }
}
