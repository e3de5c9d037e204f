//! Reading databases laid out by hand (`layout.rs`).

use super::layout::*;
use super::*;

fn read_it(file: &[u8]) -> Result<Recovered, String> {
    read(file, &[1883], &WallClock::now())
}

fn session<'a>(r: &'a Recovered, id: &str) -> &'a RecoveredSession {
    r.sessions
        .iter()
        .find(|s| s.client_id == id)
        .expect("the session")
}

/// A database of every kind of chunk midge reads (and one it does not know), as of `now_s`.
fn whole_database(now_s: u64) -> Vec<u8> {
    let mut file = header(6);
    chunk(&mut file, chunk::CONFIG, &config());
    // Content type "t/p", after the properties' length.
    chunk(
        &mut file,
        chunk::MESSAGE,
        &message(1, 0, "a/b", b"one", 1, &[6, 0x03, 0, 3, b't', b'/', b'p']),
    );
    chunk(
        &mut file,
        chunk::MESSAGE,
        &message(2, now_s + 600, "a/c", b"two", 2, &[]),
    );
    chunk(
        &mut file,
        chunk::MESSAGE,
        &message(3, now_s - 5, "a/d", b"expired", 1, &[]),
    );
    chunk(
        &mut file,
        chunk::CLIENT,
        &client("v5", now_s + 3000, 3600, 9),
    );
    let sub_id = [2, 0x0b, 5];
    chunk(
        &mut file,
        chunk::CLIENT_MESSAGE,
        &client_message("v5", 1, 8, 1, state::WAIT_FOR_PUBACK, true, &sub_id),
    );
    chunk(
        &mut file,
        chunk::CLIENT_MESSAGE,
        &client_message("v5", 2, 9, 2, state::QUEUED, true, &[]),
    );
    chunk(
        &mut file,
        chunk::CLIENT_MESSAGE,
        &client_message("v5", 3, 10, 1, state::QUEUED, true, &[]),
    );
    chunk(&mut file, chunk::CLIENT, &client("v311", 0, u32::MAX, 3));
    chunk(
        &mut file,
        chunk::CLIENT_MESSAGE,
        &client_message("v311", 2, 2, 2, state::WAIT_FOR_PUBCOMP, true, &[]),
    );
    chunk(
        &mut file,
        chunk::CLIENT_MESSAGE,
        &client_message("v311", 2, 3, 2, state::WAIT_FOR_PUBREL, false, &[]),
    );
    chunk(
        &mut file,
        chunk::SUBSCRIPTION,
        &subscription("v5", "a/#", 2, 0x04, 5),
    );
    chunk(
        &mut file,
        chunk::SUBSCRIPTION,
        &subscription("v311", "a/+", 1, 0, 0),
    );
    chunk(&mut file, chunk::RETAIN, &1u64.to_le_bytes());
    chunk(&mut file, 77, b"a kind Mosquitto may add one day");
    file
}

#[test]
fn a_database_comes_over_whole() {
    let now_s = WallClock::now().current_unix_ms() / 1000;
    let file = whole_database(now_s);
    let r = read_it(&file).unwrap();
    assert_eq!(r.retained.len(), 1);
    let (retained, publisher) = &r.retained[0];
    assert_eq!(
        (&*retained.topic, &retained.payload[..]),
        ("a/b", &b"one"[..])
    );
    assert_eq!(retained.properties.content_type.as_deref(), Some("t/p"));
    assert_eq!(publisher.as_ref().unwrap().client_id, "pub");
    assert_eq!(publisher.as_ref().unwrap().listener, 0);

    let v5 = session(&r, "v5");
    // Its last number was 9; v311's unreleased QoS 2 message to a/c came to it as 10.
    assert_eq!(
        (v5.version, v5.expiry_interval_s, v5.last_packet_id),
        (5, 3600, 10)
    );
    // Went away 600 s ago: expiry at now + 3000 less the hour.
    assert_eq!(v5.offline_since_ms, Some((now_s + 3000 - 3600) * 1000));
    assert_eq!(v5.in_flight.len(), 1);
    assert_eq!(
        (v5.in_flight[0].packet_id, v5.in_flight[0].released),
        (8, false)
    );
    assert_eq!(v5.in_flight[0].delivery.identifiers, vec![5]);
    // The expired message is left out of the queue, the other one keeps its number.
    assert_eq!(v5.queued.len(), 2);
    assert_eq!(v5.first_queued_id, Some(9));
    assert!(v5.queued[0].0.expires_at.is_some());
    assert_eq!(v5.queued[1].1.qos, 2);
    assert_eq!(v5.subscriptions, vec![("a/#".to_string(), 0x06, 5)]);

    let v311 = session(&r, "v311");
    assert_eq!((v311.version, v311.offline_since_ms), (4, None));
    assert_eq!(
        (v311.in_flight[0].packet_id, v311.in_flight[0].released),
        (2, true)
    );
    assert_eq!(v311.awaiting_pubrel, vec![3]);
    assert_eq!(v311.subscriptions, vec![("a/+".to_string(), 0x01, 0)]);
    assert!(
        r.notes.iter().any(|n| n.contains("1 expired")),
        "{:?}",
        r.notes
    );
    assert!(
        r.notes.iter().any(|n| n.contains("unknown kind 77")),
        "{:?}",
        r.notes
    );
}

#[test]
fn an_incoming_qos2_message_awaiting_pubrel_goes_to_its_subscribers() {
    let mut file = header(6);
    chunk(
        &mut file,
        chunk::MESSAGE,
        &message(1, 0, "x/y", b"held", 2, &[]),
    );
    chunk(&mut file, chunk::CLIENT, &client("sender", 0, u32::MAX, 0));
    chunk(
        &mut file,
        chunk::CLIENT_MESSAGE,
        &client_message("sender", 1, 41, 2, state::WAIT_FOR_PUBREL, false, &[]),
    );
    chunk(&mut file, chunk::CLIENT, &client("taker", 0, u32::MAX, 6));
    chunk(&mut file, chunk::CLIENT, &client("other", 0, u32::MAX, 0));
    chunk(
        &mut file,
        chunk::SUBSCRIPTION,
        &subscription("taker", "x/#", 1, 0, 0),
    );
    chunk(
        &mut file,
        chunk::SUBSCRIPTION,
        &subscription("sender", "x/#", 2, 0x04, 0),
    ); // No Local
    chunk(
        &mut file,
        chunk::SUBSCRIPTION,
        &subscription("other", "z/#", 2, 0, 0),
    );

    let r = read_it(&file).unwrap();
    assert_eq!(session(&r, "sender").awaiting_pubrel, vec![41]);
    assert!(session(&r, "sender").queued.is_empty(), "No Local");
    assert!(session(&r, "other").queued.is_empty());
    let taker = session(&r, "taker");
    assert_eq!(taker.queued.len(), 1);
    assert_eq!(taker.queued[0].1.qos, 1);
    assert_eq!((taker.first_queued_id, taker.last_packet_id), (Some(7), 7));
}

#[test]
fn what_cannot_be_read_says_why_and_where() {
    assert!(read_it(b"MIDGE")
        .unwrap_err()
        .contains("not a Mosquitto database"));
    assert!(read_it(&header(3))
        .unwrap_err()
        .contains("version 3 (Mosquitto 1.5 or older)"));
    assert!(read_it(&header(9))
        .unwrap_err()
        .contains("unknown format version 9"));
    let mut file = header(6);
    chunk(&mut file, chunk::CONFIG, &config());
    let torn = file.len() - 3;
    assert!(read_it(&file[..torn])
        .unwrap_err()
        .contains("at byte 23 runs past the end"));
    let mut file = header(6);
    chunk(
        &mut file,
        chunk::MESSAGE,
        &message(1, 0, "a", b"x", 1, &[])[..20],
    );
    assert!(read_it(&file)
        .unwrap_err()
        .contains("kind 2 at byte 23: shorter than its fields"));
    let mut file = header(6);
    chunk(&mut file, chunk::MESSAGE, &message(1, 0, "a", b"x", 3, &[]));
    assert!(read_it(&file).unwrap_err().contains("QoS 3"));
    let mut file = header(6);
    chunk(
        &mut file,
        chunk::MESSAGE,
        &message(1, 0, "a/+", b"x", 1, &[]),
    );
    assert!(read_it(&file).is_err(), "a wildcard in a topic name");
    let mut file = header(5);
    chunk(
        &mut file,
        chunk::CLIENT,
        &client("five", 0, u32::MAX, 0)[..16],
    );
    assert!(read_it(&file).unwrap_err().contains("shorter"));
}

#[test]
fn mosquitto_1_6_clients_have_no_port_or_username() {
    let mut body = 0u64.to_le_bytes().to_vec();
    body.extend(u32::MAX.to_be_bytes());
    body.extend(4u16.to_be_bytes());
    body.extend(4u16.to_be_bytes());
    body.extend(b"five");
    let mut file = header(5);
    chunk(&mut file, chunk::CLIENT, &body);
    let r = read_it(&file).unwrap();
    assert_eq!(session(&r, "five").last_packet_id, 4);
}

mod hostile {
    //! A hostile or damaged database is a clear error, never a panic or an allocation its
    //! bytes ask for: any cut, any flipped bit, any bytes after a valid header.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_cut_database_reads_or_says_where(cut in any::<prop::sample::Index>()) {
            let file = whole_database(WallClock::now().current_unix_ms() / 1000);
            let at = cut.index(file.len());
            if let Err(e) = read_it(&file[..at]) {
                // Where, or that it is no database at all.
                prop_assert!(e.contains("at byte") || e.contains("not a Mosquitto"), "{}", e);
            }
        }

        #[test]
        fn a_changed_byte_is_read_or_refused(
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            let mut file = whole_database(WallClock::now().current_unix_ms() / 1000);
            let i = at.index(file.len());
            file[i] = value;
            let _ = read_it(&file);
        }

        #[test]
        fn any_bytes_after_a_header_are_read_or_refused(
            version in 5u32..=6,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut file = header(version);
            file.extend(body);
            let _ = read_it(&file);
        }
    }

    /// A chunk that says it is 4 GiB long, with nothing after it: refused at once.
    #[test]
    fn a_chunk_longer_than_the_file_is_refused() {
        let mut file = header(6);
        file.extend(chunk::MESSAGE.to_be_bytes());
        file.extend(u32::MAX.to_be_bytes());
        assert!(read_it(&file).unwrap_err().contains("runs past the end"));
    }
}
