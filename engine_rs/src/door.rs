//! A hot request at the door, read once from its wire bytes (issue 15, "bytes in"): the
//! bounds of every id and code it names, its header, and the digest that makes two calls
//! "the same request" for idempotency. Pure: bytes in, plain data out.
//!
//! The server hands the request bytes of its hot methods (a local `Settle`, a
//! `CancelSettlement`) here instead of parsing them in Python, and the ledger takes the same
//! bytes. What is computed must equal the Python reading it replaces, to the text, for
//! every request type (tests/frontend/test_door.py holds them equal):
//! - the bounds: server/limits.py `check_ids` (its `FIELD_MAX` table is passed in: one
//!   table), the same violations in the same order, at most `max_violations` of them;
//! - the digest: server/common.py `request_hash`, SHA-256 of the method, a NUL, and the
//!   request's deterministic encoding with `header.sign_no` cleared (a retry after signing
//!   in again is still the same request).

use std::collections::HashMap;

use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use sha2::{Digest, Sha256};

use crate::wire::descriptors;

/// The header fields the server reads at the door (common.proto `RequestHeader`), in the
/// order `Admitted::header` holds them.
pub const HEADER_FIELDS: [&str; 6] = [
    "msgid",
    "fixmedins_code",
    "opter",
    "opter_name",
    "sign_no",
    "mdtrtarea_admvs",
];

/// The header type `HEADER_FIELDS` are read from (the center's node headers are not).
const REQUEST_HEADER: &str = "medsettle.v1.RequestHeader";

/// A request that passed the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// `HEADER_FIELDS`' values (empty when unset); None for a type without a
    /// `RequestHeader`.
    pub header: Option<[String; 6]>,
    /// SHA-256 of the method, a NUL and the request's encoding without the sign_no.
    pub digest: [u8; 32],
}

/// Why a request does not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a message of its type on the wire (prost-reflect's reason).
    Malformed(String),
    /// (field path, reason) of each id or code beyond its bound, in the order Python's
    /// walk names them.
    Fields(Vec<(String, String)>),
}

/// Where a message type has bounded strings: its own (field, most characters) and its
/// message fields whose types have some, both in declaration order (Python's walk).
struct Plan {
    strings: Vec<(FieldDescriptor, usize)>,
    nested: Vec<(FieldDescriptor, String)>,
}

/// The door: every message type's plan, made once from the bounds.
pub struct Door {
    plans: HashMap<String, Option<Plan>>,
    max_violations: usize,
}

impl Door {
    /// `bounds`: the longest value (in characters) of every bounded field, by field name
    /// wherever it appears; beyond `max_violations` a request is refused without looking
    /// further.
    pub fn new(bounds: &HashMap<String, usize>, max_violations: usize) -> Door {
        let mut plans = HashMap::new();
        for m in descriptors().all_messages() {
            plan_of(&m, bounds, &mut plans);
        }
        Door {
            plans,
            max_violations: max_violations.max(1),
        }
    }

    /// The message type named `type_name` (e.g. `medsettle.v1.SettleRequest`).
    pub fn message(type_name: &str) -> Option<MessageDescriptor> {
        descriptors().get_message_by_name(type_name)
    }

    /// A request of type `desc` for `method` (its short name, as the digest takes it).
    pub fn admit(
        &self,
        desc: &MessageDescriptor,
        method: &str,
        data: &[u8],
    ) -> Result<Admitted, Refusal> {
        let mut msg = DynamicMessage::decode(desc.clone(), data)
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        let mut out = Vec::new();
        if let Some(Some(plan)) = self.plans.get(desc.full_name()) {
            self.walk(&msg, plan, "", &mut out);
        }
        if !out.is_empty() {
            return Err(Refusal::Fields(out));
        }
        let header = desc
            .get_field_by_name("header")
            .filter(|f| matches!(f.kind(), Kind::Message(m) if m.full_name() == REQUEST_HEADER))
            .map(|f| header_of(&msg, &f));
        if header.as_ref().is_some_and(|h| !h[4].is_empty()) {
            // cleared in the decoded copy (present: `header` was on the wire with a sign_no)
            if let Some(h) = msg
                .get_field_by_name_mut("header")
                .and_then(Value::as_message_mut)
            {
                h.clear_field_by_name("sign_no");
            }
        }
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        hash.update([0u8]);
        hash.update(msg.encode_to_vec());
        Ok(Admitted {
            header,
            digest: hash.finalize().into(),
        })
    }

    /// Adds the violations of `msg` (and below) to `out`; true once `out` is full.
    fn walk(
        &self,
        msg: &DynamicMessage,
        plan: &Plan,
        prefix: &str,
        out: &mut Vec<(String, String)>,
    ) -> bool {
        for (f, most) in &plan.strings {
            let value = msg.get_field(f);
            match value.as_ref() {
                Value::List(items) => {
                    for (i, v) in items.iter().enumerate() {
                        let s = v.as_str().unwrap_or_default();
                        if self.check(|| format!("{prefix}{}[{i}]", f.name()), s, *most, out) {
                            return true;
                        }
                    }
                }
                v => {
                    let s = v.as_str().unwrap_or_default();
                    if self.check(|| format!("{prefix}{}", f.name()), s, *most, out) {
                        return true;
                    }
                }
            }
        }
        for (f, sub) in &plan.nested {
            let Some(Some(sub_plan)) = self.plans.get(sub) else {
                continue;
            };
            if f.is_list() {
                if let Value::List(items) = msg.get_field(f).as_ref() {
                    for (i, v) in items.iter().enumerate() {
                        if let Some(m) = v.as_message() {
                            let at = format!("{prefix}{}[{i}].", f.name());
                            if self.walk(m, sub_plan, &at, out) {
                                return true;
                            }
                        }
                    }
                }
            } else if msg.has_field(f) {
                if let Some(m) = msg.get_field(f).as_message() {
                    let at = format!("{prefix}{}.", f.name());
                    if self.walk(m, sub_plan, &at, out) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// One string against its bound (server/limits.py's texts); true once `out` is full.
    fn check(
        &self,
        field: impl FnOnce() -> String,
        s: &str,
        most: usize,
        out: &mut Vec<(String, String)>,
    ) -> bool {
        let n = s.chars().count();
        if n > most {
            out.push((
                field(),
                format!("longer than {most} characters ({})", thousands(n)),
            ));
        } else if s.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}') {
            // NUL cannot be stored in PostgreSQL text, nor should any control character
            out.push((field(), "holds control characters".to_string()));
        } else {
            return false;
        }
        out.len() >= self.max_violations
    }
}

/// The plan of `m`, made once; false when nothing in it or below is bounded. A type within
/// itself is not descended into again (as Python's `_plan`).
fn plan_of(
    m: &MessageDescriptor,
    bounds: &HashMap<String, usize>,
    plans: &mut HashMap<String, Option<Plan>>,
) -> bool {
    if let Some(p) = plans.get(m.full_name()) {
        return p.is_some();
    }
    plans.insert(m.full_name().to_string(), None);
    let mut strings = Vec::new();
    let mut nested = Vec::new();
    // declaration order (descriptor_proto), as Python's `descriptor.fields`
    for fp in &m.descriptor_proto().field {
        let Some(f) = m.get_field_by_name(fp.name()) else {
            continue;
        };
        match f.kind() {
            Kind::String => {
                if let Some(&most) = bounds.get(f.name()) {
                    strings.push((f, most));
                }
            }
            Kind::Message(sub) if !f.is_map() && plan_of(&sub, bounds, plans) => {
                nested.push((f, sub.full_name().to_string()));
            }
            _ => {}
        }
    }
    let some = !strings.is_empty() || !nested.is_empty();
    if some {
        plans.insert(m.full_name().to_string(), Some(Plan { strings, nested }));
    }
    some
}

/// The header's fields as `HEADER_FIELDS` orders them (empty strings when it is unset).
fn header_of(msg: &DynamicMessage, f: &FieldDescriptor) -> [String; 6] {
    let mut out: [String; 6] = Default::default();
    if !msg.has_field(f) {
        return out;
    }
    if let Some(h) = msg.get_field(f).as_message() {
        for (slot, name) in out.iter_mut().zip(HEADER_FIELDS) {
            if let Some(v) = h.get_field_by_name(name) {
                *slot = v.as_str().unwrap_or_default().to_string();
            }
        }
    }
    out
}

/// `n` with thousands separated by commas (Python's `{n:,}`).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RequestHeader, SettleRequest};

    fn door() -> Door {
        let bounds: HashMap<String, usize> = [("msgid", 64), ("sign_no", 64), ("mdtrt_id", 30)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Door::new(&bounds, 20)
    }

    fn settle(sign_no: &str, mdtrt_id: &str) -> Vec<u8> {
        SettleRequest {
            header: Some(RequestHeader {
                msgid: "M1".into(),
                fixmedins_code: "H1".into(),
                opter: "op".into(),
                sign_no: sign_no.into(),
                ..Default::default()
            }),
            mdtrt_id: mdtrt_id.into(),
            medfee_sumamt: 100,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_digest_leaves_the_sign_no_out() {
        let d = door();
        let desc = Door::message("medsettle.v1.SettleRequest").unwrap();
        let a = d.admit(&desc, "Settle", &settle("S1", "V1")).unwrap();
        let b = d.admit(&desc, "Settle", &settle("S2", "V1")).unwrap();
        let c = d.admit(&desc, "Settle", &settle("S1", "V2")).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
        let header = a.header.unwrap();
        assert_eq!(header[0], "M1");
        assert_eq!(header[4], "S1");
        // the method is part of it
        let other = d.admit(&desc, "PreSettle", &settle("S1", "V1")).unwrap();
        assert_ne!(a.digest, other.digest);
    }

    #[test]
    fn ids_beyond_their_bounds_are_named() {
        let d = door();
        let desc = Door::message("medsettle.v1.SettleRequest").unwrap();
        let long = "x".repeat(1234);
        match d.admit(&desc, "Settle", &settle("S\u{0}", &long)) {
            Err(Refusal::Fields(v)) => assert_eq!(
                v,
                vec![
                    (
                        "mdtrt_id".to_string(),
                        "longer than 30 characters (1,234)".to_string()
                    ),
                    (
                        "header.sign_no".to_string(),
                        "holds control characters".to_string()
                    ),
                ]
            ),
            other => panic!("{other:?}"),
        }
        // characters, not bytes: 30 CJK characters pass
        let cjk = "医".repeat(30);
        assert!(d.admit(&desc, "Settle", &settle("S", &cjk)).is_ok());
    }

    #[test]
    fn bytes_that_are_not_the_message_are_malformed() {
        let d = door();
        let desc = Door::message("medsettle.v1.SettleRequest").unwrap();
        assert!(matches!(
            d.admit(&desc, "Settle", &[0x0a, 0x05, 0x01]),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
