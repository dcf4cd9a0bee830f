//! The parts of a message's EDNS record (OPT, RFC 6891) read from its bytes.
//!
//! simple-dns 0.13 reads the version from the wrong bits of the record's TTL,
//! which hold the DO flag among them: a query from a DNSSEC-aware resolver
//! would read as EDNS version 128. Its OPT has no DO flag either, which an
//! answer copies from its query (RFC 3225). Both are read and set here.

/// The OPT record's type.
const OPT: u16 = 41;
/// The DO ("DNSSEC answer OK") flag, in the first byte of the TTL's flags.
const DO: u8 = 0x80;

/// Where a message's OPT record keeps its TTL: extended RCODE, version, flags.
fn opt_ttl(message: &[u8]) -> Option<usize> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ])))
    };
    let questions = count(4)?;
    let records = count(6)? + count(8)? + count(10)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    for _ in 0..records {
        at = skip_name(message, at)?;
        // Type, class, TTL, data length, data.
        let kind = u16::try_from(count(at)?).ok()?;
        if kind == OPT {
            return (at + 8 <= message.len()).then_some(at + 4);
        }
        at += 10 + count(at + 8)?;
    }
    None
}

/// The offset after the name at `at` (labels, ending in a zero or a pointer).
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len & 0xC0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xC0 => return Some(at + 2),
            _ => return None,
        }
    }
}

/// The EDNS version of `message`, if it has an OPT record.
pub fn version(message: &[u8]) -> Option<u8> {
    opt_ttl(message).and_then(|ttl| message.get(ttl + 1).copied())
}

/// Whether `message` asks for DNSSEC records (DO).
pub fn dnssec_ok(message: &[u8]) -> bool {
    opt_ttl(message)
        .and_then(|ttl| message.get(ttl + 2))
        .is_some_and(|flags| flags & DO != 0)
}

/// Sets DO in `message`'s OPT record (an answer to a query that set it).
pub fn set_dnssec_ok(message: &mut [u8]) {
    if let Some(flags) = opt_ttl(message).and_then(|ttl| message.get_mut(ttl + 2)) {
        *flags |= DO;
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };

    use super::*;

    fn query(edns: Option<Edns>) -> Vec<u8> {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii("app.shop.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        if let Some(edns) = edns {
            message.set_edns(edns);
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn version_and_do_are_read_from_their_own_bits() {
        assert_eq!(version(&query(None)), None);
        assert!(!dnssec_ok(&query(None)));
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        let asked = query(Some(edns.clone()));
        assert_eq!(version(&asked), Some(0), "DO is no version");
        assert!(dnssec_ok(&asked));
        edns.set_version(1);
        edns.set_dnssec_ok(false);
        let asked = query(Some(edns));
        assert_eq!(version(&asked), Some(1));
        assert!(!dnssec_ok(&asked));
    }

    #[test]
    fn do_is_set_in_place() {
        let mut answer = query(Some(Edns::new()));
        set_dnssec_ok(&mut answer);
        assert!(dnssec_ok(&answer));
        assert_eq!(version(&answer), Some(0));
        // Without OPT, nothing changes.
        let mut plain = query(None);
        let before = plain.clone();
        set_dnssec_ok(&mut plain);
        assert_eq!(plain, before);
    }

    #[test]
    fn garbage_is_no_opt() {
        for bytes in [
            &b""[..],
            b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01",
            b"\xff",
        ] {
            assert_eq!(version(bytes), None);
        }
    }
}
