//! Hostile input, fuzzed with proptest: whatever bytes arrive on the input
//! topic (in junction's format or through a mapping) or in the changelog,
//! decoding answers with an event or a reason,
//! a state or an error, and never panics. A bounded run (a few thousand
//! cases each) runs in CI; `PROPTEST_CASES` makes it longer.

use std::path::Path;

use junction::config::{self, Config};
use junction::input::event::decode;
use junction::join::WorkflowState;
use junction::state::codec;
use proptest::prelude::*;

fn config() -> Config {
    let text = r#"
[kafka]
bootstrap_servers = "x:1"
input_topics = ["in", "foreign"]
output_topic = "out"
dead_letter_topic = "dlq"
[kafka.mappings.foreign]
workflow_id = "/workflow_id"
workflow_type = "/payload/workflow_type"
step = "/step/0"
status = "/status"
status_values = { succeeded = "succeeded", "1" = "failed", "true" = "compensated" }
event_id = "/event_id"
occurred_at = "/occurred_at"
payload = ""
[[workflows]]
type = "order"
steps = ["payment", "inventory"]
[[workflows]]
type = "signup"
steps = ["email"]
"#;
    config::parse(Path::new("t.toml"), text, Vec::new()).unwrap()
}

/// JSON-shaped values: objects with the event's field names (and others),
/// each holding any kind of JSON value, so that the decoder's field checks
/// are reached and not only its JSON parser.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        prop_oneof![Just("order"), Just("signup"), Just("payment"), Just("email"), Just("succeeded"), Just("failed")]
            .prop_map(|s| format!("\"{s}\"")),
        Just("\"2026-11-22T10:00:00.123+01:00\"".to_string()),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((field_name(), inner), 0..6).prop_map(|fields| {
                let body: Vec<String> =
                    fields.into_iter().map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap())).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("workflow_id".to_string()),
        Just("workflow_type".to_string()),
        Just("step".to_string()),
        Just("status".to_string()),
        Just("event_id".to_string()),
        Just("occurred_at".to_string()),
        Just("payload".to_string()),
        "[a-z_]{1,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn any_bytes_decode_to_an_event_or_a_reason(value in prop::collection::vec(any::<u8>(), 0..300),
                                                mapped in any::<bool>()) {
        let config = config();
        let mapping = config.kafka.input_topics[1].mapping.as_ref().filter(|_| mapped);
        if let Err(bad) = decode(&config, mapping, Some(&value), 0) {
            prop_assert!(!bad.detail.is_empty(), "a reason comes with its explanation");
        }
    }

    #[test]
    fn json_shaped_values_decode_to_an_event_or_a_reason(value in json_value(), mapped in any::<bool>()) {
        let config = config();
        let mapping = config.kafka.input_topics[1].mapping.as_ref().filter(|_| mapped);
        match decode(&config, mapping, Some(value.as_bytes()), 0) {
            Ok(event) => {
                prop_assert!(!event.workflow_id.is_empty());
                prop_assert!(!event.step.is_empty() || !mapped, "a step is named");
                if let junction::input::event::TypeRef::Unresolved { error, .. } = &event.workflow {
                    prop_assert!(!error.detail.is_empty(), "an unresolved type comes with its reason");
                }
            }
            Err(bad) => prop_assert!(!bad.detail.is_empty()),
        }
    }

    #[test]
    fn any_changelog_bytes_decode_to_a_state_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = codec::decode(&bytes);
        let _ = codec::summary(&bytes);
    }

    #[test]
    fn a_state_with_any_bytes_flipped_decodes_or_errs(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                                      ids in prop::collection::vec(".{0,10}", 0..5)) {
        let mut state = WorkflowState::new("order", 42);
        state.event_ids = ids;
        let mut bytes = codec::encode(&state);
        for (at, mask) in flips {
            let i = at % bytes.len();
            bytes[i] ^= mask;
        }
        if let Ok(decoded) = codec::decode(&bytes) {
            // Whatever decodes encodes again to something that decodes the same.
            prop_assert_eq!(codec::decode(&codec::encode(&decoded)).unwrap(), decoded);
        }
    }
}
