//! DISCONNECT and AUTH (§3.14–3.15). PINGREQ and PINGRESP have no body and live in `mod.rs`.

use bytes::BufMut;

use super::connect::encode_properties;
use super::error::{DecodeError, EncodeError};
use super::primitives::Reader;
use super::properties::{Properties, PropertyContext};
use super::reason::{ReasonCode, ReasonContext};
use super::ProtocolVersion;

/// DISCONNECT (3.x: no body) or AUTH (5.0 only): a reason code and properties, both of which
/// may be left off when they are Success and none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

pub type Auth = Disconnect;

impl Default for Disconnect {
    fn default() -> Self {
        Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }
}

impl Disconnect {
    pub fn with_reason(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }

    /// Decodes the body of a DISCONNECT or AUTH (§3.14.2.1, §3.15.2.1).
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
        context: ReasonContext,
        properties_context: PropertyContext,
        packet: &'static str,
    ) -> Result<Self, DecodeError> {
        let (reason, properties) =
            decode_reason_tail(r, version, context, properties_context, packet)?;
        Ok(Disconnect { reason, properties })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        reason_tail_len(self.reason, &self.properties, version)
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        encode_reason_tail(self.reason, &self.properties, version, buf);
    }
}

/// The 5.0 tail of DISCONNECT, AUTH and the PUBLISH acknowledgements: a reason code, then
/// properties, each of which may be left off when it is Success and none (§3.4.2.1,
/// §3.14.2.1, §3.15.2.1). Absent before 5.0.
pub(super) fn decode_reason_tail(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
    context: ReasonContext,
    properties_context: PropertyContext,
    packet: &'static str,
) -> Result<(ReasonCode, Properties), DecodeError> {
    let mut reason = ReasonCode::Success;
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 && r.has_remaining() {
        let code = r.u8()?;
        reason = ReasonCode::from_u8(code)
            .filter(|&c| context.allows(c))
            .ok_or(DecodeError::InvalidReasonCode { packet, code })?;
        if r.has_remaining() {
            properties = Properties::decode(r, properties_context)?;
        }
    }
    Ok((reason, properties))
}

pub(super) fn reason_tail_len(
    reason: ReasonCode,
    properties: &Properties,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    if version != ProtocolVersion::V5 {
        return Ok(0);
    }
    if properties.is_empty() {
        return Ok(usize::from(reason != ReasonCode::Success));
    }
    Ok(1 + properties.encoded_len()?)
}

pub(super) fn encode_reason_tail<B: BufMut>(
    reason: ReasonCode,
    properties: &Properties,
    version: ProtocolVersion,
    buf: &mut B,
) {
    if version != ProtocolVersion::V5 {
        return;
    }
    let has_properties = !properties.is_empty();
    if reason != ReasonCode::Success || has_properties {
        buf.put_u8(reason as u8);
    }
    if has_properties {
        encode_properties(properties, buf);
    }
}
