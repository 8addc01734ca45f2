//! What `junction validate` says about the state it can see: which edits of
//! `[[workflows]]` (and of the deadlines and retention) affect workflows
//! still open in the stores under `state.dir` (DESIGN.md, "Workflow
//! definitions change"). It reads the stores only, without a lock, so it
//! works beside a running junction too (then it sees its last flush).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::join::Definition;
use crate::state::{codec, Store};

/// Open workflows of one type, by the definition they started with
/// (`None`: stored before definitions were kept).
type ByDefinition = BTreeMap<Option<DefinitionKey>, usize>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DefinitionKey {
    steps: Vec<String>,
    quorum: usize,
    deadline_ms: Option<i64>,
}

/// Lines for the operator, one per edit that affects open workflows; and
/// one per store it could not read. Empty when no state is there.
pub fn report(config: &Config) -> Vec<String> {
    let root = config.state.dir.join(&config.kafka.application_id);
    let mut lines = Vec::new();
    let mut open: BTreeMap<String, ByDefinition> = BTreeMap::new();
    let mut stores = 0;
    let mut partitions: Vec<(i32, std::path::PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    partitions.sort();
    for (partition, path) in partitions {
        match scan(&path, &mut open) {
            Ok(()) => stores += 1,
            Err(e) => lines.push(format!("cannot read the state of partition {partition}: {e}")),
        }
    }
    if stores == 0 {
        return lines;
    }
    for (workflow_type, by_definition) in &open {
        let total: usize = by_definition.values().sum();
        let Some(spec) = config.workflow(workflow_type) else {
            lines.push(format!(
                "workflow type {workflow_type:?} is removed: its {total} open workflow(s) finish by their own definition"
            ));
            continue;
        };
        let configured = Definition::of(spec);
        for (definition, n) in by_definition {
            let Some(own) = definition else {
                lines.push(format!(
                    "{n} open {workflow_type:?} workflow(s) were stored before definitions were kept: they take the \
                     configured steps {:?} and quorum {}",
                    spec.steps, spec.quorum
                ));
                continue;
            };
            if own.steps != configured.steps || own.quorum != configured.quorum {
                lines.push(format!(
                    "{n} open {workflow_type:?} workflow(s) keep the steps {:?} and quorum {} they started with \
                     (configured now: {:?}, quorum {})",
                    own.steps, own.quorum, spec.steps, spec.quorum
                ));
            }
            if own.deadline_ms != configured.deadline_ms {
                lines.push(format!(
                    "{n} open {workflow_type:?} workflow(s) started with a deadline of {}; the configured {} applies \
                     to them from the next start",
                    shown(own.deadline_ms),
                    shown(configured.deadline_ms)
                ));
            }
        }
    }
    lines
}

fn shown(deadline_ms: Option<i64>) -> String {
    deadline_ms.map_or("none".to_string(), |ms| format!("{:?}", std::time::Duration::from_millis(ms.max(0) as u64)))
}

/// Counts the open workflows of one store by type and definition.
fn scan(path: &Path, open: &mut BTreeMap<String, ByDefinition>) -> Result<(), crate::state::StoreError> {
    let store = Store::open_read_only(path)?;
    let known = store.definitions()?;
    store.for_each_state(|_, bytes| {
        let Ok(state) = codec::decode(bytes) else { return };
        if !state.is_open() {
            return;
        }
        let own = state.definition.as_ref().and_then(|d| d.resolve(&known));
        let key = own.map(|d| DefinitionKey { steps: d.steps.clone(), quorum: d.quorum, deadline_ms: d.deadline_ms });
        *open.entry(state.workflow_type).or_default().entry(key).or_default() += 1;
    })
}
