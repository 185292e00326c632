//! The layout rules of PROTOCOL.md §4 that a receiver enforces, each shown on a hand-built
//! body: out-of-line data in field order, depth first, not overlapping, before the struct
//! that points to it; where an empty vector may point; alignment; gaps ignored.

use protocol::frame::{decode, Header};
use protocol::{ErrorCode, Kind, Message};

/// A vector field's 8 bytes: `target − field_pos` then the length.
fn vec_field(field_pos: usize, target: usize, len: usize) -> [u8; 8] {
    let mut b = [0u8; 8];
    let rel = target as i64 - field_pos as i64;
    b[..4].copy_from_slice(&i32::try_from(rel).expect("small").to_le_bytes());
    b[4..].copy_from_slice(&u32::try_from(len).expect("small").to_le_bytes());
    b
}

fn decodes(kind: Kind, body: &[u8]) -> Result<Message, ErrorCode> {
    let header = Header {
        body_len: body.len() as u32,
        kind: kind as u8,
        request_id: 1,
    };
    decode(&header, body).map_err(|e| e.code())
}

/// A `HELLO` body: `data` (a multiple of 4 bytes), then the 16-byte root whose two vectors
/// point at the absolute positions given.
fn hello(data: &[u8], token: (usize, usize), name: (usize, usize)) -> Result<Message, ErrorCode> {
    assert_eq!(data.len() % 4, 0, "the root is 4-aligned");
    let root = data.len();
    let mut body = data.to_vec();
    body.extend_from_slice(&vec_field(root, token.0, token.1));
    body.extend_from_slice(&vec_field(root + 8, name.0, name.1));
    decodes(Kind::Hello, &body)
}

fn hello_of(m: Result<Message, ErrorCode>) -> (Vec<u8>, Vec<u8>) {
    match m {
        Ok(Message::Hello(h)) => (h.client_token, h.client_name),
        other => panic!("expected a HELLO, got {other:?}"),
    }
}

#[test]
fn sibling_vectors_data_must_come_in_field_order_and_not_overlap() {
    let data = *b"tokname\0";
    // In field order: valid.
    assert_eq!(
        hello_of(hello(&data, (0, 3), (3, 4))),
        (b"tok".to_vec(), b"name".to_vec())
    );
    // The second field's data before the first's: refused.
    let swapped = *b"nametok\0";
    assert_eq!(hello(&swapped, (4, 3), (0, 4)), Err(ErrorCode::InvalidBody));
    // Overlapping, or the very same bytes twice: refused.
    assert_eq!(hello(&data, (0, 4), (2, 4)), Err(ErrorCode::InvalidBody));
    assert_eq!(hello(&data, (0, 3), (0, 3)), Err(ErrorCode::InvalidBody));
}

#[test]
fn data_must_lie_before_the_struct_that_points_to_it_and_gaps_are_ignored() {
    let data = *b"tokname\0";
    // Pointing into the root (data at or after the root's first byte): refused.
    assert_eq!(hello(&data, (0, 3), (8, 4)), Err(ErrorCode::InvalidBody));
    assert_eq!(hello(&data, (0, 3), (6, 4)), Err(ErrorCode::InvalidBody));
    // Bytes no vector covers, before, between or after the data, are not read.
    let gappy = *b"\xaa\xaatok\xaa\xaa\xaaname\xaa\xaa\xaa\xaa";
    assert_eq!(
        hello_of(hello(&gappy, (2, 3), (8, 4))),
        (b"tok".to_vec(), b"name".to_vec())
    );
}

#[test]
fn an_empty_vector_may_point_from_the_end_of_the_data_before_it_to_its_struct() {
    let data = *b"tok\0";
    let root = data.len();
    // An empty `client_name` after `tok`, or at the root's start: valid.
    assert_eq!(hello_of(hello(&data, (0, 3), (3, 0))).1, Vec::<u8>::new());
    assert_eq!(
        hello_of(hello(&data, (0, 3), (root, 0))).1,
        Vec::<u8>::new()
    );
    // Inside the root (here at its own field, relative offset 0), or before the data of the
    // field ahead of it: refused.
    assert_eq!(
        hello(&data, (0, 3), (root + 8, 0)),
        Err(ErrorCode::InvalidBody)
    );
    assert_eq!(hello(&data, (1, 3), (0, 0)), Err(ErrorCode::InvalidBody));
    // An empty vector claims its position: the data of a later field cannot come before it.
    assert_eq!(hello(&data, (root, 0), (0, 3)), Err(ErrorCode::InvalidBody));
    assert_eq!(
        hello_of(hello(&data, (0, 0), (0, 3))),
        (Vec::new(), b"tok".to_vec())
    );
}

/// An `EVENT_BATCH` body: `data`, then the 8-byte root pointing at `events`.
fn event_batch(data: &[u8], events: (usize, usize)) -> Result<Message, ErrorCode> {
    let mut body = data.to_vec();
    body.extend_from_slice(&vec_field(data.len(), events.0, events.1));
    decodes(Kind::EventBatch, &body)
}

#[test]
fn vector_data_is_aligned_to_its_elements_even_when_empty() {
    // One 32-byte WireEvent (align 8) at 8: valid; at 4: refused.
    let mut data = vec![0u8; 40];
    data[8] = 7; // id 7
    data[8 + 24] = 4; // kind 4
    assert!(
        matches!(event_batch(&data, (8, 1)), Ok(Message::EventBatch(b)) if b.events[0].id == 7)
    );
    let mut shifted = vec![0u8; 36];
    shifted[4] = 7;
    assert_eq!(event_batch(&shifted, (4, 1)), Err(ErrorCode::InvalidBody));
    // Empty, but at a position that is not a multiple of 8: refused too.
    assert!(event_batch(&[0; 8], (8, 0)).is_ok());
    assert_eq!(event_batch(&[0; 4], (4, 0)), Err(ErrorCode::InvalidBody));
}

#[test]
fn nested_vectors_data_comes_first_depth_first_before_the_array_that_holds_them() {
    // A ClusterReply (root 56 bytes, align 8) with one WireMember (32 bytes, align 8) whose
    // `client_addr` is "a" and `peer_addr` "b".
    fn cluster(
        data: &[u8],
        members_at: usize,
        a_at: usize,
        b_at: usize,
    ) -> Result<Message, ErrorCode> {
        let root = data.len();
        let mut body = data.to_vec();
        // The member: generation 5, weight 1, node_id 2, then its two vectors.
        let m = members_at;
        body[m..m + 8].copy_from_slice(&5u64.to_le_bytes());
        body[m + 8..m + 12].copy_from_slice(&1u32.to_le_bytes());
        body[m + 12..m + 14].copy_from_slice(&2u16.to_le_bytes());
        body[m + 16..m + 24].copy_from_slice(&vec_field(m + 16, a_at, 1));
        body[m + 24..m + 32].copy_from_slice(&vec_field(m + 24, b_at, 1));
        body[a_at] = b'a';
        body[b_at] = b'b';
        let mut r = [0u8; 56];
        r[16..24].copy_from_slice(&vec_field(root + 16, members_at, 1));
        r[24..32].copy_from_slice(&vec_field(root + 24, root, 0));
        r[32..40].copy_from_slice(&vec_field(root + 32, root, 0));
        body.extend_from_slice(&r);
        decodes(Kind::ClusterOk, &body)
    }
    // The order an rkyv serializer writes: "a", "b", padding to 8, the member array, root.
    let ok = cluster(&[0u8; 40], 8, 0, 1);
    assert!(
        matches!(&ok, Ok(Message::ClusterOk(c)) if c.members[0].client_addr == b"a" && c.members[0].peer_addr == b"b"),
        "{ok:?}"
    );
    // The member array first and its strings after it: refused (a struct's data comes
    // before the struct, at every depth).
    assert_eq!(cluster(&[0u8; 40], 0, 32, 33), Err(ErrorCode::InvalidBody));
}
