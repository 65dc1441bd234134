//! Which server: the kinds of server the measurements start, their command lines, the scale
//! measurement's configurations, and where their binaries are.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

/// Which server.
///
/// Serialised as its [`Kind::name`]: `naive`, `lariat`, `lariat --delivery MODE`, `actix`,
/// `lariat --metrics`, or for the scale measurement `lariat serve …` (see [`Scale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `naive-echo`: tokio's README echo server.
    Naive,
    /// `lariat serve --handler echo`: plain async reads and writes.
    Lariat,
    /// `lariat serve --handler echo --delivery MODE`: echo on the message API in that mode.
    LariatDelivery(Delivery),
    /// `actix-echo`: an echo server on actix-server with one worker, what a user would pick
    /// instead of lariat.
    Actix,
    /// `lariat serve --handler echo --threads 1` with more accept loops or processes: the scale
    /// measurement's configurations.
    LariatScale(Scale),
    /// `lariat serve --handler echo --metrics 127.0.0.1:0`: the metrics measurement's server, whose
    /// baseline is [`Kind::Lariat`] (the same command without `--metrics`).
    LariatMetrics,
}

/// How many accept loops and processes serve one port, in the scale measurement. Every process
/// runs one runtime worker (`--threads 1`), as the other measurements' servers do when pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scale {
    /// `lariat serve`: one process, one accept loop (the baseline).
    Single,
    /// `lariat serve --acceptors N`: N accept loops in one process, on clones of the socket.
    Acceptors(u8),
    /// `lariat serve --workers N`: a supervisor and N worker processes on one shared socket.
    Workers(u8),
    /// N independent `lariat serve --reuseport` processes on one port, each with its own
    /// SO_REUSEPORT socket (and accept queue); the later ones bind the first one's port.
    ReusePort(u8),
}

impl Scale {
    /// In the order each round runs them; the first is the baseline.
    pub const ALL: [Scale; 4] = [
        Scale::Single,
        Scale::Acceptors(2),
        Scale::Workers(2),
        Scale::ReusePort(2),
    ];

    /// How many server processes are started (the workers of `--workers` are started by their
    /// supervisor).
    pub fn processes(self) -> usize {
        match self {
            Scale::ReusePort(n) => usize::from(n),
            _ => 1,
        }
    }

    /// The arguments after `lariat serve`'s common ones.
    fn args(self) -> Vec<String> {
        match self {
            Scale::Single => Vec::new(),
            Scale::Acceptors(n) => vec!["--acceptors".to_string(), n.to_string()],
            Scale::Workers(n) => vec!["--workers".to_string(), n.to_string()],
            Scale::ReusePort(_) => vec!["--reuseport".to_string()],
        }
    }

    /// The short name: `1 loop`, `--acceptors 2`, `--workers 2`, `2 × --reuseport`.
    pub fn label(self) -> String {
        match self {
            Scale::Single => "1 loop".to_string(),
            Scale::Acceptors(n) => format!("--acceptors {n}"),
            Scale::Workers(n) => format!("--workers {n}"),
            Scale::ReusePort(n) => format!("{n} × --reuseport"),
        }
    }
}

/// A `lariat serve --delivery` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delivery {
    /// `--delivery pull`: each chunk pulled with `Messages::recv`.
    Pull,
    /// `--delivery once`: one chunk, then re-armed.
    Once,
    /// `--delivery N`: N chunks, then an `Event::Passive` and a re-arm.
    Count(u32),
    /// `--delivery push`: every chunk as it comes.
    Push,
}

impl Delivery {
    /// The value of `--delivery`.
    pub fn arg(self) -> String {
        match self {
            Delivery::Pull => "pull".to_string(),
            Delivery::Once => "once".to_string(),
            Delivery::Count(n) => n.to_string(),
            Delivery::Push => "push".to_string(),
        }
    }
}

impl Kind {
    /// In the order each round runs them.
    pub const ALL: [Kind; 3] = [Kind::Naive, Kind::Lariat, Kind::Actix];

    /// `naive`, `lariat`, `lariat --delivery MODE` or `actix`.
    pub fn name(self) -> Cow<'static, str> {
        match self {
            Kind::Naive => "naive".into(),
            Kind::Lariat => "lariat".into(),
            Kind::LariatDelivery(mode) => format!("lariat --delivery {}", mode.arg()).into(),
            Kind::Actix => "actix".into(),
            Kind::LariatScale(Scale::Single) => "lariat serve".into(),
            Kind::LariatScale(Scale::ReusePort(n)) => {
                format!("{n} × lariat serve --reuseport").into()
            }
            Kind::LariatScale(scale) => format!("lariat serve {}", scale.label()).into(),
            Kind::LariatMetrics => "lariat --metrics".into(),
        }
    }

    /// How the table names it as another row's baseline: `plain` for lariat without `--delivery`,
    /// the mode for the other delivery rows, `1 loop` for the scale rows.
    pub fn baseline_label(self) -> String {
        match self {
            Kind::Naive => "naive".to_string(),
            Kind::Lariat => "plain".to_string(),
            Kind::LariatDelivery(mode) => mode.arg(),
            Kind::Actix => "actix".to_string(),
            Kind::LariatScale(scale) => scale.label(),
            Kind::LariatMetrics => "--metrics".to_string(),
        }
    }

    fn binary_name(self) -> &'static str {
        match self {
            Kind::Naive => "naive-echo",
            Kind::Lariat | Kind::LariatDelivery(_) | Kind::LariatScale(_) | Kind::LariatMetrics => {
                "lariat"
            }
            Kind::Actix => "actix-echo",
        }
    }

    /// Its command-line arguments, listening on an ephemeral port of 127.0.0.1.
    pub fn args(self) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Kind::Naive | Kind::Actix => vec!["127.0.0.1:0"],
            Kind::Lariat | Kind::LariatDelivery(_) | Kind::LariatScale(_) | Kind::LariatMetrics => {
                vec![
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--handler",
                    "echo",
                    "--max-connections",
                    "20000",
                ]
            }
        }
        .into_iter()
        .map(String::from)
        .collect();
        match self {
            Kind::LariatDelivery(mode) => args.extend(["--delivery".to_string(), mode.arg()]),
            Kind::LariatScale(scale) => {
                args.extend(["--threads".to_string(), "1".to_string()]);
                args.extend(scale.args());
            }
            // Port 0: the server prints the port it got on its `metrics on tcp://…` line.
            Kind::LariatMetrics => {
                args.extend(["--metrics".to_string(), "127.0.0.1:0".to_string()])
            }
            _ => {}
        }
        args
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.name())
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

/// Where the server binaries are: next to the bench's own executable.
#[derive(Debug, Clone)]
pub struct Binaries {
    naive: PathBuf,
    lariat: PathBuf,
    actix: PathBuf,
}

impl Binaries {
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the bench's own executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
        let find = |kind: Kind| -> anyhow::Result<PathBuf> {
            let path = dir.join(kind.binary_name());
            if !path.is_file() {
                bail!(
                    "{} not found (the bench looks next to its own executable).\n\
                     Build the servers first, in the same profile as the bench:\n    \
                     cargo build --release -p lariat-cli -p lariat-bench",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Binaries {
            naive: find(Kind::Naive)?,
            lariat: find(Kind::Lariat)?,
            actix: find(Kind::Actix)?,
        })
    }

    /// The directory the binaries are in (the bench's own).
    pub fn dir(&self) -> PathBuf {
        self.lariat
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    pub fn path(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Naive => &self.naive,
            Kind::Lariat | Kind::LariatDelivery(_) | Kind::LariatScale(_) | Kind::LariatMetrics => {
                &self.lariat
            }
            Kind::Actix => &self.actix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Kind::Lariat.name(), "lariat");
        assert_eq!(
            Kind::LariatDelivery(Delivery::Once).name(),
            "lariat --delivery once"
        );
        assert_eq!(
            serde_json::to_string(&Kind::LariatDelivery(Delivery::Count(100))).unwrap(),
            r#""lariat --delivery 100""#
        );
        assert_eq!(serde_json::to_string(&Kind::Naive).unwrap(), r#""naive""#);
        assert_eq!(serde_json::to_string(&Kind::Actix).unwrap(), r#""actix""#);
        assert_eq!(format!("{:<8}|", Kind::Naive), "naive   |");
        assert_eq!(Kind::LariatScale(Scale::Single).name(), "lariat serve");
        assert_eq!(
            Kind::LariatScale(Scale::Workers(2)).name(),
            "lariat serve --workers 2"
        );
        assert_eq!(
            Kind::LariatScale(Scale::ReusePort(2)).name(),
            "2 × lariat serve --reuseport"
        );
        assert_eq!(Kind::LariatScale(Scale::Single).baseline_label(), "1 loop");
    }

    #[test]
    fn arguments() {
        assert_eq!(Kind::Naive.args(), ["127.0.0.1:0"]);
        assert_eq!(Kind::Actix.args(), ["127.0.0.1:0"]);
        assert_eq!(Kind::Actix.binary_name(), "actix-echo");
        let lariat = Kind::Lariat.args();
        assert!(!lariat.iter().any(|a| a == "--delivery"));
        let push = Kind::LariatDelivery(Delivery::Push).args();
        assert_eq!(push[..lariat.len()], lariat[..]);
        assert_eq!(push[lariat.len()..], ["--delivery", "push"]);
        assert_eq!(
            Kind::LariatDelivery(Delivery::Count(100)).args()[lariat.len()..],
            ["--delivery", "100"]
        );
        let single = Kind::LariatScale(Scale::Single).args();
        assert_eq!(single[..lariat.len()], lariat[..]);
        assert_eq!(single[lariat.len()..], ["--threads", "1"]);
        assert_eq!(
            Kind::LariatScale(Scale::Acceptors(2)).args()[single.len()..],
            ["--acceptors", "2"]
        );
        assert_eq!(
            Kind::LariatScale(Scale::Workers(2)).args()[single.len()..],
            ["--workers", "2"]
        );
        assert_eq!(
            Kind::LariatScale(Scale::ReusePort(2)).args()[single.len()..],
            ["--reuseport"]
        );
        assert_eq!(Scale::ReusePort(2).processes(), 2);
        assert_eq!(Scale::Workers(2).processes(), 1);
        let metrics = Kind::LariatMetrics.args();
        assert_eq!(metrics[..lariat.len()], lariat[..]);
        assert_eq!(metrics[lariat.len()..], ["--metrics", "127.0.0.1:0"]);
        assert_eq!(Kind::LariatMetrics.binary_name(), "lariat");
        assert_eq!(Kind::LariatMetrics.name(), "lariat --metrics");
    }
}
