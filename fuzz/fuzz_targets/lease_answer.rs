//! Fuzzes the decoder of the lease scripts' answers (`cluster::redis_store::
//! decode_script_answer`: status, incarnation, epoch or holder, quiet-period notice; or a bad
//! stored value naming its key) with arbitrary Redis replies built from the bytes: it must
//! return an answer or an error, never panic, and a bad value's text is bounded.
#![no_main]

use cluster::redis_store::{decode_script_answer, RedisStoreError, BAD_VALUE_SHOWN_MAX};
use libfuzzer_sys::fuzz_target;
use redis::Value;

/// One reply element from the front of `data`: a tag byte, then its payload.
fn element(data: &mut &[u8]) -> Option<Value> {
    let (&tag, rest) = data.split_first()?;
    *data = rest;
    let take = |data: &mut &[u8]| {
        let (&len, rest) = data.split_first()?;
        let n = usize::from(len).min(rest.len());
        let (b, rest) = rest.split_at(n);
        *data = rest;
        Some(b.to_vec())
    };
    Some(match tag % 5 {
        0 => Value::BulkString(take(data)?),
        1 => {
            let b = take(data)?;
            let mut w = [0u8; 8];
            let n = b.len().min(8);
            w[..n].copy_from_slice(&b[..n]);
            Value::Int(i64::from_le_bytes(w))
        }
        2 => Value::Nil,
        3 => Value::SimpleString(String::from_utf8_lossy(&take(data)?).into_owned()),
        _ => Value::Okay,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let Some((&n, tail)) = rest.split_first() else {
        return;
    };
    rest = tail;
    let mut items = Vec::new();
    for _ in 0..(n % 8) {
        match element(&mut rest) {
            Some(v) => items.push(v),
            None => break,
        }
    }
    let reply = if n & 0x80 != 0 {
        items.pop().unwrap_or(Value::Nil)
    } else {
        Value::Array(items)
    };
    if let Err(RedisStoreError::Corrupt(v)) = decode_script_answer(reply) {
        // Shown values are cut (lossy UTF-8 may widen each byte to 3).
        assert!(v.value.len() <= BAD_VALUE_SHOWN_MAX * 3);
    }
});
