//! This process's identity: an exclusive lock on its state directory, and
//! the instance ID it keeps there.
//!
//! Under `exactly_once` the instance ID names the transactional producer
//! (`<application_id>-<instance_id>`). Two live processes must never share
//! one, or each new producer fences the other's; and a process that starts
//! again on the same state directory must get its old one back, so that its
//! first `init_transactions` aborts the transaction its predecessor left
//! open at once, instead of leaving `read_committed` readers to wait for the
//! broker's transaction timeout. Both follow from keeping the ID in the
//! state directory, next to the stores it belongs with, and from letting
//! only one process at a time use that directory: a container re-created on
//! its volume, or a pod on its persistent volume, keeps its ID whatever its
//! new host name.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::config::Config;

/// The lock file, held for the life of the process.
const LOCK_FILE: &str = "instance.lock";
/// The instance ID, written once when the directory is first used.
const ID_FILE: &str = "instance.id";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "the state directory {dir} is in use by another junction process{holder}; \
         every instance needs a state.dir of its own"
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("cannot use the state directory {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The claim on a state directory: released when dropped (or when the process ends).
pub struct Instance {
    /// This instance's ID: `kafka.instance_id`, or the one kept in the state directory.
    pub id: String,
    _lock: File,
}

impl Instance {
    /// Locks `state.dir/<application_id>` for this process and reads its
    /// instance ID, making one on first use (unless `kafka.instance_id` sets it).
    pub fn claim(config: &Config) -> Result<Instance, InstanceError> {
        let dir = config.state.dir.join(&config.kafka.application_id);
        let io = |source| InstanceError::Io { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut lock = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        // SAFETY: flock takes the descriptor of a file this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { String::new() } else { format!(" (process {holder})") };
            return Err(InstanceError::InUse { dir, holder });
        }
        lock.set_len(0).map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        let id = match &config.kafka.instance_id {
            Some(id) => id.clone(),
            None => kept_id(&dir).map_err(io)?,
        };
        Ok(Instance { id, _lock: lock })
    }
}

/// The ID kept in `dir`, made (the host name and a random suffix) when there is none.
fn kept_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if valid_id(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => tracing::warn!(path = %path.display(), "the kept instance ID is not a valid ID; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("{}-{}", host_name(), random_suffix()?);
    // Written whole, then renamed: a crash never leaves half an ID.
    let partial = dir.join(format!("{ID_FILE}.partial"));
    std::fs::write(&partial, format!("{id}\n"))?;
    File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &path)?;
    info!(instance_id = %id, path = %path.display(), "made this instance's ID; it is kept with the state");
    Ok(id)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The host name, reduced to what an ID may hold: only a reminder of where
/// the ID was made; the random suffix is what makes it unique.
fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(64).collect();
    if host.is_empty() {
        "junction".into()
    } else {
        host
    }
}

fn random_suffix() -> std::io::Result<String> {
    let mut bytes = [0u8; 6];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, instance_id: Option<&str>) -> Config {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\ninput_topic = \"in\"\noutput_topic = \"out\"\n\
             dead_letter_topic = \"dlq\"\n{}\n[state]\ndir = {:?}\n\n[[workflows]]\ntype = \"t\"\nsteps = [\"a\"]\n",
            instance_id.map(|id| format!("instance_id = {id:?}")).unwrap_or_default(),
            dir.display().to_string(),
        );
        crate::config::parse(Path::new("test.toml"), &text, Vec::new()).unwrap()
    }

    #[test]
    fn a_state_directory_keeps_its_instance_id_and_serves_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), None);
        let first = Instance::claim(&config).unwrap();
        assert!(valid_id(&first.id), "{}", first.id);
        match Instance::claim(&config) {
            Err(InstanceError::InUse { holder, .. }) => assert!(holder.contains(&std::process::id().to_string())),
            other => panic!("a second claim must be refused, got {:?}", other.map(|i| i.id)),
        }
        let id = first.id.clone();
        drop(first);
        assert_eq!(Instance::claim(&config).unwrap().id, id, "the ID survives a restart");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Instance::claim(&self::config(other.path(), None)).unwrap().id, id, "another directory, another ID");
    }

    #[test]
    fn a_configured_instance_id_wins_over_the_kept_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Instance::claim(&config(dir.path(), Some("replica-7"))).unwrap().id, "replica-7");
    }
}
