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

    /// Decodes the body of a DISCONNECT or AUTH in 5.0 (§3.14.2.1, §3.15.2.1).
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
        context: ReasonContext,
        properties_context: PropertyContext,
        packet: &'static str,
    ) -> Result<Self, DecodeError> {
        let mut out = Disconnect::default();
        if version == ProtocolVersion::V5 && r.has_remaining() {
            let code = r.u8()?;
            out.reason = ReasonCode::from_u8(code)
                .filter(|&c| context.allows(c))
                .ok_or(DecodeError::InvalidReasonCode { packet, code })?;
            if r.has_remaining() {
                out.properties = Properties::decode(r, properties_context)?;
            }
        }
        Ok(out)
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if version != ProtocolVersion::V5 {
            return Ok(0);
        }
        if self.properties.is_empty() {
            return Ok(usize::from(self.reason != ReasonCode::Success));
        }
        Ok(1 + self.properties.encoded_len()?)
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        if version != ProtocolVersion::V5 {
            return;
        }
        let has_properties = !self.properties.is_empty();
        if self.reason != ReasonCode::Success || has_properties {
            buf.put_u8(self.reason as u8);
        }
        if has_properties {
            encode_properties(&self.properties, buf);
        }
    }
}
