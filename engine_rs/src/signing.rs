//! The canonical string a request's signature covers (clients/signing.py describes the
//! scheme): the request's fields in their proto3 JSON form, with field names as in the
//! .proto, together with `method`, `timestamp` and `nonce`, in ASCII order of their names,
//! as `name=value` joined by `&`; empty values left out; a string written as it is, any
//! other value (a number, a bool, a nested message, a list) as compact JSON with its keys
//! sorted. Pure: the request's bytes and its type's name in, the UTF-8 bytes out.
//!
//! Both sides of a call compute it (the HIS's SDK to sign, the server to verify), so it is
//! computed once, here, from the same descriptors the wire types are generated from
//! (build.rs keeps them). tests/security/canonical_twin.py is the reading of the scheme in
//! Python (protobuf's `MessageToDict`) that this must equal for every request type.

use std::collections::BTreeMap;

use prost_reflect::{DynamicMessage, SerializeOptions};

use crate::wire::descriptors;
use serde_json::Value;

/// The names the scheme adds beside the request's fields (no request may have a field of
/// one of these names).
pub const RESERVED: [&str; 3] = ["method", "timestamp", "nonce"];

/// The canonical string (UTF-8) of a call of `method` whose request, of the message type
/// `type_name` (e.g. `medsettle.v1.SettleRequest`), is `request` on the wire.
pub fn canonical(
    type_name: &str,
    request: &[u8],
    method: &str,
    timestamp_ms: i64,
    nonce: &str,
) -> Result<Vec<u8>, String> {
    let desc = descriptors()
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("no message type {type_name}"))?;
    let msg = DynamicMessage::decode(desc, request)
        .map_err(|e| format!("{type_name}: malformed message: {e}"))?;
    // proto3 JSON as protobuf's MessageToDict gives it: .proto names, 64-bit integers as
    // strings, enums by name, fields at their default left out
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    let json = msg
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("{type_name}: {e}"))?;
    let Value::Object(fields) = json else {
        return Err(format!("{type_name}: not a message"));
    };
    // BTreeMap: ASCII (byte) order of the names, as the scheme wants
    let mut all: BTreeMap<String, Value> = BTreeMap::new();
    for (name, value) in fields {
        if RESERVED.contains(&name.as_str()) {
            return Err(format!("{type_name} has a field named {name}"));
        }
        all.insert(name, value);
    }
    all.insert("method".into(), Value::String(method.into()));
    all.insert("timestamp".into(), Value::String(timestamp_ms.to_string()));
    all.insert("nonce".into(), Value::String(nonce.into()));
    let mut out = Vec::with_capacity(256);
    for (name, value) in &all {
        let text = match value {
            Value::Null => continue,
            Value::String(s) if s.is_empty() => continue,
            Value::Array(a) if a.is_empty() => continue,
            Value::Object(o) if o.is_empty() => continue,
            Value::String(s) => s.clone(),
            // serde_json's maps are ordered by key (no `preserve_order`): nested keys sorted
            other => other.to_string(),
        };
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(text.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use prost::Message;

    #[test]
    fn the_settle_request_as_the_scheme_writes_it() {
        let req = wire::SettleRequest {
            header: Some(wire::RequestHeader {
                fixmedins_code: "H1".into(),
                msgid: "m\"1".into(),
                opter: "张三".into(),
                ..Default::default()
            }),
            mdtrt_id: "M1".into(),
            psn_no: "P1".into(),
            medfee_sumamt: 102_550,
            acct_used_flag: true,
            ..Default::default()
        };
        let text = canonical(
            "medsettle.v1.SettleRequest",
            &req.encode_to_vec(),
            "/medsettle.v1.Settlement/Settle",
            1_796_500_000_000,
            "abcdefgh",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "acct_used_flag=true&header={\"fixmedins_code\":\"H1\",\"msgid\":\"m\\\"1\",\
             \"opter\":\"张三\"}&mdtrt_id=M1&medfee_sumamt=102550\
             &method=/medsettle.v1.Settlement/Settle&nonce=abcdefgh&psn_no=P1\
             &timestamp=1796500000000"
        );
    }

    #[test]
    fn unknown_types_and_malformed_bytes_are_errors() {
        assert!(canonical("medsettle.v1.Nothing", b"", "m", 0, "n").is_err());
        assert!(canonical("medsettle.v1.SettleRequest", b"\xff\xff", "m", 0, "n").is_err());
    }
}
