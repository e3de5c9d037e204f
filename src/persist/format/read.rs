//! Reading a journal: record bodies into records, and a file into its records, turn by
//! turn, up to its torn tail.

use bytes::Bytes;

use super::*;

impl Record {
    /// Reads one record body (its checksum already checked).
    fn decode(body: &Bytes) -> Result<Record, String> {
        let mut r = Fields { body, pos: 0 };
        let record = match r.u8()? {
            kind::MESSAGE => Record::Message {
                id: r.u64()?,
                expires_at_ms: r.u64()?,
                publish: r.bytes()?,
            },
            kind::RETAINED => Record::Retained {
                seq: r.u64()?,
                message: r.u64()?,
                source: match r.u8()? {
                    0 => None,
                    flag @ (1 | 2) => Some(Publisher {
                        client_id: r.string()?,
                        username: if flag == 2 { Some(r.string()?) } else { None },
                        listener: r.u32()?,
                    }),
                    other => return Err(format!("bad publisher flag {other}")),
                },
            },
            kind::RETAINED_CLEARED => Record::RetainedCleared {
                seq: r.u64()?,
                topic: r.string()?,
            },
            kind::RETAINED_BASELINE => Record::RetainedBaseline { seq: r.u64()? },
            kind::STARTED => Record::Started {
                session: r.u64()?,
                client_id: r.string()?,
                claim: r.u64()?,
                last_packet_id: r.u16()?,
            },
            kind::PARAMETERS => Record::Parameters {
                session: r.u64()?,
                version: r.u8()?,
                expiry_interval_s: r.u32()?,
            },
            kind::SUBSCRIBED => Record::Subscribed {
                session: r.u64()?,
                filter: r.string()?,
                options: r.u8()?,
                identifier: r.u32()?,
            },
            kind::UNSUBSCRIBED => Record::Unsubscribed {
                session: r.u64()?,
                filter: r.string()?,
            },
            kind::QUEUED => Record::Queued {
                session: r.u64()?,
                packet_id: r.u16()?,
                message: r.u64()?,
                delivery: Delivery::decode(&mut r)?,
            },
            kind::DEQUEUED => Record::Dequeued { session: r.u64()? },
            kind::IN_FLIGHT => Record::InFlight {
                session: r.u64()?,
                packet_id: r.u16()?,
                message: r.u64()?,
                delivery: Delivery::decode(&mut r)?,
            },
            kind::RELEASED => Record::Released {
                session: r.u64()?,
                packet_id: r.u16()?,
            },
            kind::FINISHED => Record::Finished {
                session: r.u64()?,
                packet_id: r.u16()?,
            },
            kind::AWAITING_PUBREL => Record::AwaitingPubrel {
                session: r.u64()?,
                packet_id: r.u16()?,
            },
            kind::PUBREL_RECEIVED => Record::PubrelReceived {
                session: r.u64()?,
                packet_id: r.u16()?,
            },
            kind::DISCONNECTED => Record::Disconnected {
                session: r.u64()?,
                at_ms: r.u64()?,
            },
            kind::ENDED => Record::Ended { session: r.u64()? },
            kind::WILL_WAITING => Record::WillWaiting {
                session: r.u64()?,
                due_ms: r.u64()?,
                message: r.u64()?,
            },
            kind::WILL_GONE => Record::WillGone { session: r.u64()? },
            kind::FORWARDED => {
                let (to_shard, number, message) = (r.u16()?, r.u64()?, r.u64()?);
                let count = r.u32()? as usize;
                // Each target takes at least 10 bytes: a count past what is left is damage.
                if count > body.len() / 10 {
                    return Err(format!(
                        "{count} targets in a record of {} bytes",
                        body.len()
                    ));
                }
                let mut targets = Vec::with_capacity(count);
                for _ in 0..count {
                    targets.push((r.u64()?, Delivery::decode(&mut r)?));
                }
                Record::Forwarded {
                    to_shard,
                    number,
                    message,
                    targets,
                }
            }
            kind::RECEIVED => Record::Received {
                from_shard: r.u16()?,
                number: r.u64()?,
            },
            kind::TURN_END => Record::TurnEnd,
            other => return Err(format!("unknown record kind {other}")),
        };
        if r.pos != body.len() {
            return Err(format!(
                "{} bytes after a record's fields",
                body.len() - r.pos
            ));
        }
        Ok(record)
    }
}

impl Delivery {
    fn decode(r: &mut Fields<'_>) -> Result<Delivery, String> {
        let byte = r.u8()?;
        let count = r.u8()?;
        let identifiers = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
        Ok(Delivery {
            qos: byte & 0x03,
            retain: byte & 0x80 != 0,
            identifiers,
        })
    }
}

/// Reads a record body's fields in order.
struct Fields<'a> {
    body: &'a Bytes,
    pos: usize,
}

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.body.len());
        let end = end.ok_or("a record's fields end early")?;
        let bytes = &self.body[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.u32()? as usize;
        let start = self.pos;
        self.take(len)?;
        Ok(self.body.slice(start..start + len))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }
}

/// Reads every record of a journal file's bytes (header included), handing each to
/// `apply` as it is read (a store of millions of records is never all decoded at once).
/// Returns the bytes of a torn last record, left out; damage anywhere else, or an error
/// from `apply`, is an error saying where.
pub fn read_each(
    file: &Bytes,
    mut apply: impl FnMut(Record) -> Result<(), String>,
) -> Result<usize, String> {
    let in_turns = check_header(file)? >= 2;
    // The records of the turn being read, with where each began: applied at its end.
    let mut turn: Vec<(usize, Record)> = Vec::new();
    let mut pos = HEADER_LEN;
    let torn_from = loop {
        if pos >= file.len() {
            break None;
        }
        let rest = file.len() - pos;
        if rest < RECORD_HEADER_LEN {
            break Some(pos);
        }
        let len = u32::from_le_bytes(file[pos..pos + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().expect("4"));
        if len > RECORD_MAX {
            return Err(format!("record at byte {pos}: length {len} is damage"));
        }
        let end = pos + RECORD_HEADER_LEN + len;
        if end > file.len() {
            break Some(pos);
        }
        let body = file.slice(pos + RECORD_HEADER_LEN..end);
        if crc32c::crc32c(&body) != crc {
            if end == file.len() {
                break Some(pos);
            }
            return Err(format!("record at byte {pos}: checksum mismatch"));
        }
        let record = Record::decode(&body).map_err(|e| format!("record at byte {pos}: {e}"))?;
        match record {
            Record::TurnEnd => {
                for (at, record) in turn.drain(..) {
                    apply(record).map_err(|e| format!("record at byte {at}: {e}"))?;
                }
            }
            record if in_turns => turn.push((pos, record)),
            record => apply(record).map_err(|e| format!("record at byte {pos}: {e}"))?,
        }
        pos = end;
    };
    // A turn without its end is the torn tail, from its first record.
    let torn_from = turn.first().map(|(at, _)| *at).or(torn_from);
    Ok(torn_from.map_or(0, |at| file.len() - at))
}
