//! Turns the `--listen` values and any passed sockets (systemd, or a restart's predecessor) into
//! listeners, each with the name a restart passes it on under.

use anyhow::{bail, Context};
use lariat::activation::Inherited;
use lariat::{BindOptions, Listener};

use crate::cli::{ListenSpec, DEFAULT_LISTEN};

/// A listener and the name its socket is passed under in a restart.
pub struct Named {
    pub name: String,
    pub listener: Listener,
}

/// Resolves `specs` against the `inherited` sockets:
/// - `systemd:NAME` takes the passed socket of that name;
/// - an address takes the passed socket named after it (a restart's predecessor names each socket by
///   its `--listen` value), else binds it;
/// - no `--listen` at all takes every passed socket, or binds the default address if none was passed.
///
/// Passed sockets nobody asked for are closed, with a warning.
pub fn resolve(
    specs: &[ListenSpec],
    inherited: Vec<Inherited>,
    opts: &BindOptions,
) -> anyhow::Result<Vec<Named>> {
    let mut inherited: Vec<Option<Inherited>> = inherited.into_iter().map(Some).collect();
    let mut take = |name: &str| {
        inherited
            .iter_mut()
            .find(|slot| slot.as_ref().and_then(|i| i.name.as_deref()) == Some(name))
            .and_then(Option::take)
    };
    let mut named = Vec::new();
    for spec in specs {
        match spec {
            ListenSpec::Systemd(name) => {
                let Some(passed) = take(name) else {
                    bail!("--listen systemd:{name}: no socket named {name:?} was passed (LISTEN_FDNAMES)");
                };
                named.push(Named {
                    name: name.clone(),
                    listener: passed.listener,
                });
            }
            ListenSpec::Bind { endpoint, text } => {
                let listener = match take(text) {
                    Some(passed) => passed.listener,
                    None => Listener::bind_with(endpoint, opts)?,
                };
                named.push(Named {
                    name: text.clone(),
                    listener,
                });
            }
        }
    }
    if specs.is_empty() {
        for (i, passed) in inherited.iter_mut().filter_map(Option::take).enumerate() {
            named.push(Named {
                name: passed.name.unwrap_or_else(|| format!("fd{}", 3 + i)),
                listener: passed.listener,
            });
        }
        if named.is_empty() {
            let endpoint = DEFAULT_LISTEN.parse().context("the default address")?;
            named.push(Named {
                name: DEFAULT_LISTEN.to_owned(),
                listener: Listener::bind_with(&endpoint, opts)?,
            });
        }
    }
    for unused in inherited.into_iter().flatten() {
        tracing::warn!(
            name = unused.name.as_deref().unwrap_or(""),
            listener = %unused.listener.local_addr(),
            "a passed socket matches no --listen; closing it"
        );
    }
    Ok(named)
}
