//! Frames round-trip, match the hex vectors PROTOCOL.md documents, and refuse bad bytes with
//! the documented error.

mod samples;

use protocol::frame::{decode_frame, encode, FrameError, Header, Limits, HEADER_LEN};
use protocol::{ErrorCode, Kind, Message};

fn frame(id: u64, m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(id, m, &mut out);
    out
}

fn hex(bytes: &[u8]) -> String {
    // 16 bytes a line, so the vectors read like a hex dump.
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect()
}

#[test]
fn every_message_round_trips() {
    for (name, id, m) in samples::all() {
        let bytes = frame(id, &m);
        let (rid, back, used) =
            decode_frame(&bytes, Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((rid, &back, used), (id, &m, bytes.len()), "{name}");
    }
}

/// The vectors under `protocol/vectors/` are the exact bytes of each sample frame. Run with
/// `UPDATE_VECTORS=1` after an intended change to the wire format, and update PROTOCOL.md.
#[test]
fn frames_match_the_published_hex_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let update = std::env::var_os("UPDATE_VECTORS").is_some();
    for (name, id, m) in samples::all() {
        let path = dir.join(format!("{name}.hex"));
        let want = hex(&frame(id, &m));
        if update {
            std::fs::write(&path, &want).expect("write vector");
            continue;
        }
        let have = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_VECTORS=1", path.display()));
        assert_eq!(have, want, "{name}: the wire format changed; if intended, regenerate with UPDATE_VECTORS=1 and update PROTOCOL.md");
        // And the published bytes decode to the sample (what a foreign client relies on).
        let (rid, back, _) =
            decode_frame(&unhex(&have), Limits::default()).expect("vector decodes");
        assert_eq!((rid, back), (id, m), "{name}");
    }
}

#[test]
fn bad_headers_get_their_documented_error() {
    let good = frame(9, &samples::all()[2].2);
    let head = |b: &[u8]| -> [u8; HEADER_LEN] { b[..HEADER_LEN].try_into().expect("16 bytes") };

    let mut bad_magic = good.clone();
    bad_magic[4] = b'X';
    assert_eq!(
        Header::parse(&head(&bad_magic), Limits::default()).map_err(|e| e.code()),
        Err(ErrorCode::MalformedFrame)
    );

    let mut bad_version = good.clone();
    bad_version[6] = 9;
    assert_eq!(
        Header::parse(&head(&bad_version), Limits::default()),
        Err(FrameError::UnsupportedVersion(9))
    );

    let small = Limits { frame_len_max: 32 };
    assert!(matches!(
        Header::parse(&head(&good), small),
        Err(FrameError::TooLarge { max: 32, .. })
    ));

    let mut short = good.clone();
    short[..4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        Header::parse(&head(&short), Limits::default()).map_err(|e| e.code()),
        Err(ErrorCode::MalformedFrame)
    );

    let mut unknown = good.clone();
    unknown[7] = 0x42;
    assert_eq!(
        decode_frame(&unknown, Limits::default()).map_err(|e| e.code()),
        Err(ErrorCode::UnknownKind)
    );

    assert_eq!(
        decode_frame(&good[..good.len() - 1], Limits::default()).map_err(|e| e.code()),
        Err(ErrorCode::MalformedFrame)
    );
}

#[test]
fn a_body_that_is_not_an_archive_of_its_kind_is_refused() {
    // A quote body under the Hello kind: its relative pointers point nowhere valid.
    let mut f = frame(1, &samples::all()[2].2);
    f[7] = Kind::Hello as u8;
    let e = decode_frame(&f, Limits::default()).expect_err("invalid");
    assert_eq!(e.code(), ErrorCode::InvalidBody, "{e}");
    // A body too short for the root.
    let mut tiny = frame(1, &samples::all()[8].2);
    tiny.truncate(HEADER_LEN + 8);
    tiny[..4].copy_from_slice(&(12u32 + 8).to_le_bytes());
    assert_eq!(
        decode_frame(&tiny, Limits::default()).map_err(|e| e.code()),
        Err(ErrorCode::InvalidBody)
    );
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Random bytes never panic the decoder, and every failure maps to an error code.
        #[test]
        fn random_bytes_are_refused_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes, Limits::default()).map_err(|e| e.code());
        }

        /// Valid frames with bytes flipped, cut or extended never panic the decoder either.
        #[test]
        fn mutated_frames_are_refused_or_decoded_without_panicking(
            pick in 0usize..25, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>(), extend in 0usize..4
        ) {
            let (_, id, m) = samples::all().swap_remove(pick);
            let mut f = frame(id, &m);
            for (at, x) in flips {
                let i = at.index(f.len());
                f[i] ^= x;
            }
            let keep = HEADER_LEN.min(f.len()) + cut.index(f.len() - HEADER_LEN.min(f.len()) + 1);
            f.truncate(keep);
            f.extend(std::iter::repeat_n(0xAA, extend));
            let _ = decode_frame(&f, Limits::default()).map_err(|e| e.code());
        }
    }
}

#[test]
fn a_body_that_does_not_validate_is_explained_in_words() {
    let reason = |body: &[u8]| {
        let mut f = frame(1, &samples::all()[0].2);
        f.truncate(HEADER_LEN);
        f[0..4].copy_from_slice(&((12 + body.len()) as u32).to_le_bytes());
        f.extend_from_slice(body);
        match decode_frame(&f, Limits::default()) {
            Err(e @ FrameError::InvalidBody { .. }) => e.to_string(),
            other => panic!("{other:?}"),
        }
    };
    // HELLO's root is 16 bytes (two vectors), align 4.
    assert!(reason(&[0; 4]).contains("4 bytes, shorter than the message's 16-byte root"));
    assert!(reason(&[0; 18]).contains("not a multiple of the message's alignment 4"));
    let out_of_body = [0xff, 0xff, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(reason(&out_of_body).contains("reaching outside the body"));
}
