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
            which @ (kind::FORWARDED | kind::FORWARDED_WITHOUT_ORDER) => {
                let (to_shard, number) = (r.u16()?, r.u64()?);
                let order = if which == kind::FORWARDED {
                    Some(PublishOrder {
                        shard: r.u16()?,
                        number: r.u64()?,
                    })
                } else {
                    None
                };
                let message = r.u64()?;
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
                    order,
                    message,
                    targets,
                }
            }
            kind::RECEIVED => Record::Received {
                from_shard: r.u16()?,
                number: r.u64()?,
            },
            kind::HELD_DELIVERED => Record::HeldDelivered { number: r.u64()? },
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

/// Where and why a journal could not be read on: its records before `at` were read (the
/// turns they make applied), those from `at` on were not; `turns_after`: how many turn ends
/// lie beyond it (what was not read, for the log).
#[derive(Debug)]
pub struct Damage {
    pub at: usize,
    pub what: String,
    pub turns_after: usize,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at < HEADER_LEN {
            write!(f, "{}", self.what)
        } else {
            write!(f, "record at byte {}: {}", self.at, self.what)
        }
    }
}

/// Reads every record of a journal file's bytes (header included), handing each to
/// `apply` as it is read (a store of millions of records is never all decoded at once),
/// a turn at a time at its end. Returns the bytes of a torn tail, left out.
///
/// A torn tail is what a crash cut off the last write: the journal writes a turn at a
/// time and never appends after a write that failed (`journal/failing.rs`). A bad record
/// with valid data after it is damage: a whole turn's end with more written after it, or
/// records that read cleanly from the bad one's end to the file's, ending a turn (a bit
/// flipped in a record whose length is intact). Damage is an error saying where, as is an
/// error from `apply`. (Read as torn, though it may be damage: a bad length in the last turn,
/// with nothing readable after it but that turn's end.)
pub fn read_each(
    file: &Bytes,
    mut apply: impl FnMut(Record) -> Result<(), String>,
) -> Result<usize, Damage> {
    let in_turns = check_header(file).map_err(|what| Damage {
        at: 0,
        what,
        turns_after: 0,
    })? >= 2;
    // The records of the turn being read, with where each began: applied at its end.
    let mut turn: Vec<(usize, Record)> = Vec::new();
    let mut pos = HEADER_LEN;
    let damage = |at: usize, what: String| Damage {
        at,
        what,
        turns_after: turn_ends(file, at).count(),
    };
    let torn_from = loop {
        if pos >= file.len() {
            break None;
        }
        let (record, end) = match next_record(file, pos) {
            Ok(read) => read,
            Err(Bad { what, shape }) => {
                let written_after = match shape {
                    Shape::Impossible => true,
                    // The file ends with its last turn's end (a bit flipped at most), or
                    // ends so before zeros: that write was whole, so the bad record is
                    // damage (a crash cuts a write short, or leaves zeros where it did not
                    // land).
                    _ if in_turns && ends_with_turn_end(file, pos) => true,
                    // It is a turn's end, a bit flipped (its length, say): written whole.
                    _ if in_turns && is_turn_end(&file[pos..]) => true,
                    // Format 1 had no turns: only the file's last record may be torn.
                    Shape::Cut => in_turns && turn_ends(file, pos).any(|end| end < file.len()),
                    Shape::Whole { end } if !in_turns => end < file.len(),
                    // A whole record is cut by a crash only where the zeros of a write that
                    // did not land begin (the file ends in them): one wholly before them
                    // was written whole, and is damaged.
                    Shape::Whole { end } => {
                        turn_ends(file, pos).any(|end| end < file.len())
                            || (end < file.len() && reads_to_the_end(file, end))
                            || zeros_from(file) >= end
                    }
                };
                if written_after {
                    return Err(damage(pos, what));
                }
                break Some(pos);
            }
        };
        match record {
            Record::TurnEnd => {
                for (at, record) in turn.drain(..) {
                    apply(record).map_err(|what| damage(at, what))?;
                }
            }
            record if in_turns => turn.push((pos, record)),
            record => apply(record).map_err(|what| damage(pos, what))?,
        }
        pos = end;
    };
    // A turn without its end is the torn tail, from its first record.
    let torn_from = turn.first().map(|(at, _)| *at).or(torn_from);
    Ok(torn_from.map_or(0, |at| file.len() - at))
}

/// A record that could not be read: why, and its shape.
struct Bad {
    what: String,
    shape: Shape,
}

enum Shape {
    /// It runs past the end of the file (a write cut short, or a bad length).
    Cut,
    /// Its length fits the file, and it ends at `end` (a bad checksum or body).
    Whole { end: usize },
    /// Its length is past any record's.
    Impossible,
}

/// The record at `pos` and where the next one begins.
fn next_record(file: &Bytes, pos: usize) -> Result<(Record, usize), Bad> {
    let rest = file.len() - pos;
    if rest < RECORD_HEADER_LEN {
        return Err(Bad {
            what: format!("{rest} bytes, too few for a record"),
            shape: Shape::Cut,
        });
    }
    let len = u32::from_le_bytes(file[pos..pos + 4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().expect("4"));
    let end = pos + RECORD_HEADER_LEN + len;
    if len > RECORD_MAX {
        return Err(Bad {
            what: format!("length {len} is past any record's"),
            shape: Shape::Impossible,
        });
    }
    if end > file.len() {
        return Err(Bad {
            what: format!("length {len} runs past the end of the file"),
            shape: Shape::Cut,
        });
    }
    let body = file.slice(pos + RECORD_HEADER_LEN..end);
    if crc32c::crc32c(&body) != crc {
        return Err(Bad {
            what: "checksum mismatch".into(),
            shape: Shape::Whole { end },
        });
    }
    let record = Record::decode(&body).map_err(|what| Bad {
        what,
        shape: Shape::Whole { end },
    })?;
    Ok((record, end))
}

/// Where the zeros the file ends in begin (its length if its last byte is not zero).
fn zeros_from(file: &[u8]) -> usize {
    file.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

/// Whether the file ends, after `pos` and before any zeros it ends in, with a `TurnEnd`
/// record or one a bit away from it.
fn ends_with_turn_end(file: &[u8], pos: usize) -> bool {
    let file = &file[..zeros_from(file)];
    let Some(tail) = file.len().checked_sub(TURN_END_LEN).filter(|&at| at >= pos) else {
        return false;
    };
    is_turn_end(&file[tail..])
}

/// A `TurnEnd` record's length, header included.
const TURN_END_LEN: usize = RECORD_HEADER_LEN + 1;

/// Whether `bytes` begin with a whole `TurnEnd` record, or one a bit away from it (its
/// bytes are always the same; a write cut short leaves a part of them, or zeros, many bits
/// away).
fn is_turn_end(bytes: &[u8]) -> bool {
    let mut mark = BytesMut::new();
    Record::TurnEnd.encode(&mut mark);
    debug_assert_eq!(mark.len(), TURN_END_LEN);
    let Some(bytes) = bytes.get(..mark.len()) else {
        return false;
    };
    let bits: u32 = (bytes.iter().zip(&mark[..]))
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    bits <= 1
}

/// Whether the records from `pos` read cleanly to the end of the file, the last one a
/// turn's end.
fn reads_to_the_end(file: &Bytes, mut pos: usize) -> bool {
    let mut last = None;
    while pos < file.len() {
        match next_record(file, pos) {
            Ok((record, end)) => (last, pos) = (Some(record), end),
            Err(_) => return false,
        }
    }
    matches!(last, Some(Record::TurnEnd))
}

/// Where each whole turn-end record after `pos` ends (found by its bytes, which are always
/// the same: an empty turn end has a fixed length and checksum).
fn turn_ends(file: &[u8], pos: usize) -> impl Iterator<Item = usize> + '_ {
    let mut mark = BytesMut::new();
    Record::TurnEnd.encode(&mut mark);
    let from = (pos + 1).min(file.len());
    let found: Vec<usize> = (file[from..].windows(mark.len()))
        .enumerate()
        .filter(|(_, w)| *w == &mark[..])
        .map(|(i, _)| from + i + mark.len())
        .collect();
    found.into_iter()
}
