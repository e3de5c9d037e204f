use super::*;
use crate::codec::{MqttStr, QoS};
use crate::types::SessionId;
use std::sync::atomic::AtomicUsize;

fn message(payload: &'static [u8], expires_in: Option<Duration>, now: Instant) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from_static("a/b"),
        payload: Bytes::from_static(payload),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Default::default(),
        origin: None,
        expires_at: expires_in.map(|d| now + d),
        order: Default::default(),
        stream: Default::default(),
    })
}

fn delivery(qos: u8, identifiers: Vec<u32>) -> Delivery {
    Delivery {
        qos,
        retain: qos == 1,
        identifiers,
    }
}

/// A live session holding a bit of everything a session can hold.
fn session(now: Instant) -> Box<Session> {
    let mut r = RecoveredSession::started("dev-1".into(), 9, 0);
    r.parameters(5, 3600);
    r.subscribed("a/+".into(), 0x2a, 7);
    r.subscribed("$share/g/b/#".into(), 0x01, 0);
    r.in_flight(3, message(b"one", None, now), delivery(2, vec![7]));
    r.released(3);
    r.in_flight(
        4,
        message(b"two", Some(Duration::from_secs(60)), now),
        delivery(1, vec![]),
    );
    r.queued(message(b"three", None, now), delivery(1, vec![7, 8]), 5);
    r.queued(message(b"four", None, now), delivery(2, vec![]), 6);
    r.awaiting_pubrel(11);
    let clock = WallClock::now();
    let bytes = Arc::new(AtomicUsize::new(0));
    let id = SessionId::new(1);
    let mut revived = r.revive(id, 0, &bytes, &clock, now).session;
    revived.set_credentials(Some("user"), None);
    revived.set_listener(2);
    revived
}

fn payloads<'a>(messages: impl Iterator<Item = &'a Arc<Message>>) -> Vec<Vec<u8>> {
    messages.map(|m| m.payload.to_vec()).collect()
}

#[test]
fn a_session_arrives_with_everything_it_held() {
    let now = Instant::now();
    let sent = session(now);
    let (bytes, cut) = encode_session(&sent, now, 1 << 20);
    assert_eq!(cut, 0);
    let later = now + Duration::from_secs(1);
    let moved = decode_session(&bytes, later).unwrap();
    assert_eq!(moved.username.as_deref(), Some("user"));
    assert_eq!(moved.listener, 2);
    let r = &moved.session;
    assert_eq!(
        (r.client_id.as_str(), r.version, r.expiry_interval_s),
        ("dev-1", 5, 3600)
    );
    let mut subs = r.subscriptions.clone();
    subs.sort();
    assert_eq!(
        subs,
        [
            ("$share/g/b/#".to_string(), 0x01, 0),
            ("a/+".to_string(), 0x2a, 7)
        ]
    );
    let in_flight: Vec<_> = (r.in_flight.iter())
        .map(|f| {
            (
                f.packet_id,
                f.released,
                f.delivery.clone(),
                f.message.payload.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        in_flight,
        [
            (3, true, delivery(2, vec![7]), b"one".to_vec()),
            (4, false, delivery(1, vec![]), b"two".to_vec()),
        ]
    );
    // What was left of the expiry when it left, from when it arrives.
    assert_eq!(
        r.in_flight[1].message.expires_at,
        Some(later + Duration::from_secs(60))
    );
    assert_eq!(
        payloads(r.queued.iter().map(|(m, _)| m)),
        [b"three".to_vec(), b"four".to_vec()]
    );
    assert_eq!(r.queued[0].1, delivery(1, vec![7, 8]));
    assert_eq!(r.first_queued_id, Some(5));
    assert_eq!(r.last_packet_id, sent.outgoing().last_id());
    assert_eq!(r.awaiting_pubrel, [11]);
    // Revived, it is the session that left.
    let clock = WallClock::now();
    let filter_bytes = Arc::new(AtomicUsize::new(0));
    let id = SessionId::new(2);
    let again = moved
        .session
        .revive(id, 0, &filter_bytes, &clock, later)
        .session;
    let (a, b) = (sent.durable(), again.durable());
    assert_eq!(
        (a.subscriptions, a.awaiting_pubrel),
        (b.subscriptions, b.awaiting_pubrel)
    );
    let ids = |d: &crate::session::Durable| d.inflight.keys().copied().collect::<Vec<_>>();
    assert_eq!(ids(&sent.durable()), ids(&again.durable()));
    let queued: Vec<u16> = again.outgoing().queued().map(|q| q.packet_id).collect();
    assert_eq!(queued, [5, 6]);
}

#[test]
fn what_does_not_fit_is_cut_from_the_back_of_the_queue_and_counted() {
    let now = Instant::now();
    let sent = session(now);
    let (whole, _) = encode_session(&sent, now, 1 << 20);
    // Room for all but the last queued message.
    let (bytes, cut) = encode_session(&sent, now, whole.len() - 1);
    assert_eq!(cut, 1);
    let moved = decode_session(&bytes, now).unwrap();
    assert_eq!(
        payloads(moved.session.queued.iter().map(|(m, _)| m)),
        [b"three".to_vec()]
    );
    assert_eq!(
        moved.session.in_flight.len(),
        2,
        "what is in flight always goes"
    );
}

#[test]
fn bad_bytes_are_an_error_never_a_session() {
    let now = Instant::now();
    let (bytes, _) = encode_session(&session(now), now, 1 << 20);
    for cut in 0..bytes.len() {
        assert!(decode_session(&bytes[..cut], now).is_err(), "cut at {cut}");
    }
    let mut trailing = bytes.to_vec();
    trailing.push(0);
    assert!(decode_session(&trailing, now).is_err());
    let mut other_format = bytes.to_vec();
    other_format[0] = 9;
    assert!(decode_session(&other_format, now).is_err());
    // A count far past what the bytes hold is refused before anything is made for it.
    let mut huge = vec![FORMAT];
    huge.extend_from_slice(&[0, 0, 0, 1, b'x', 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_session(&huge, now).unwrap_err().contains("items"));
}

#[test]
fn repeated_or_zero_packet_ids_and_repeated_filters_are_refused() {
    let now = Instant::now();
    let mut r = RecoveredSession::started("dev".into(), 1, 0);
    r.parameters(4, 0);
    r.subscriptions = vec![("a".into(), 1, 0), ("a".into(), 1, 0)];
    let clock = WallClock::now();
    let filter_bytes = Arc::new(AtomicUsize::new(0));
    let session = r
        .clone()
        .revive(SessionId::new(1), 0, &filter_bytes, &clock, now)
        .session;
    // The live session holds the filter once: its bytes are good.
    let (bytes, _) = encode_session(&session, now, 1 << 20);
    assert!(decode_session(&bytes, now).is_ok());
    // Written by hand: the same filter twice.
    let mut twice = bytes.to_vec();
    let at = twice
        .windows(5)
        .position(|w| w == [0, 0, 0, 1, b'a'])
        .unwrap();
    let entry = twice[at..at + 10].to_vec();
    twice[at - 4..at].copy_from_slice(&2u32.to_be_bytes());
    twice.splice(at + 10..at + 10, entry);
    assert!(decode_session(&twice, now).unwrap_err().contains("twice"));
}

#[test]
fn owners_requests_and_answers_read_back_as_written() {
    let owner = Owner {
        node: "node-a".into(),
        incarnation: 42,
        claim: 9,
    };
    let bare = decode_owner(&encode_owner(&owner, None)).unwrap();
    assert_eq!((bare.owner, bare.record), (owner.clone(), None));
    let with = decode_owner(&encode_owner(&owner, Some(b"rec"))).unwrap();
    assert_eq!(with.owner, owner);
    assert_eq!(with.record.as_deref(), Some(&b"rec"[..]));
    for taken_by in [None, Some("node-b".to_string())] {
        let value = NodeValue {
            node: "node-a".into(),
            incarnation: 42,
            taken_by,
        };
        assert_eq!(decode_node(&encode_node(&value)).unwrap(), value);
    }
    assert_eq!(decode_position(&encode_position(42, 1234)), Ok((42, 1234)));
    // A node's heartbeat is not a position, nor the reverse.
    assert!(decode_position(&encode_node(&NodeValue {
        node: "n".into(),
        incarnation: 1,
        taken_by: None,
    }))
    .is_err());
    assert!(decode_node(&encode_position(42, 1234)).is_err());
    assert!(decode_node(&[FORMAT, 0]).is_err());
    let request = TakeRequest {
        client_id: "ünï/x".into(),
        clean_start: true,
        revision: 77,
        wait_ms: 4000,
        incarnation: 5,
    };
    assert_eq!(decode_request(&encode_request(&request)).unwrap(), request);
    for answer in [
        TakeAnswer::Nothing,
        TakeAnswer::Retry,
        TakeAnswer::Superseded,
        TakeAnswer::NotThisRun,
    ] {
        let bytes = encode_answer(&answer);
        let back = decode_answer(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{answer:?}"));
    }
    let session = encode_answer(&TakeAnswer::Session(Bytes::from_static(b"s")));
    assert!(matches!(decode_answer(&session), Ok(TakeAnswer::Session(b)) if &b[..] == b"s"));
    assert!(decode_answer(&Bytes::from_static(&[FORMAT, 7])).is_err());
    assert!(decode_owner(&Bytes::from_static(&[2, 0])).is_err());
    let mut trailing = encode_owner(&owner, None).to_vec();
    trailing.push(0);
    assert!(decode_owner(&Bytes::from(trailing)).is_err());
}

#[test]
fn a_record_is_the_session_without_its_messages_and_with_its_connections_will() {
    let now = Instant::now();
    let mut sent = session(now);
    let mut properties = crate::codec::Properties::default();
    properties.will_delay_interval = Some(30);
    sent.will = Some(Box::new(crate::codec::Will {
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
        topic: MqttStr::from_static("gone/dev-1"),
        payload: Bytes::from_static(b"bye"),
    }));
    let record = encode_record(&sent, now, None);
    assert_eq!(client_id_of(&record).unwrap(), "dev-1");
    let later = now + Duration::from_secs(1);
    let moved = decode_session(&record, later).unwrap();
    let r = &moved.session;
    assert_eq!(
        (r.subscriptions.len(), r.version, r.expiry_interval_s),
        (2, 5, 3600)
    );
    assert!(r.in_flight.is_empty() && r.queued.is_empty() && r.awaiting_pubrel.is_empty());
    assert_eq!(moved.username.as_deref(), Some("user"));
    // The will is due its delay after the record is read: when the owner is found gone.
    let (due, will) = r.delayed_will.as_ref().expect("the will");
    let clock = WallClock::now();
    let due_in = Duration::from_millis(due.saturating_sub(clock.unix_ms(later)));
    assert!(due_in > Duration::from_secs(29) && due_in <= Duration::from_secs(30));
    assert_eq!(&will.payload[..], b"bye");
    // A session that ends with its connection: its will is due at once.
    sent.clean = true;
    let moved = decode_session(&encode_record(&sent, now, None), later).unwrap();
    let (due, _) = moved.session.delayed_will.expect("the will");
    assert!(due <= clock.unix_ms(later) + 1);
    assert_eq!(moved.session.offline_since_ms, None, "connected");
    // Offline since a minute: so it says, by the wall clock.
    let minute_ago = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
    let offline = decode_session(&encode_record(&sent, now, Some(minute_ago)), later).unwrap();
    let since = offline.session.offline_since_ms.expect("offline since");
    assert!(since.abs_diff(clock.unix_ms(minute_ago)) <= 1);
    // No will: none in the record.
    sent.will = None;
    let moved = decode_session(&encode_record(&sent, now, None), later).unwrap();
    assert!(moved.session.delayed_will.is_none());
}
