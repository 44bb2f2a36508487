//! The layer and updater types a job can use: the built-in ones and those of plugins
//! ([`crate::plugins`]).

use singa_core::{Error, LayerType, Result, UpdaterType};
use std::fmt;

/// Where a type comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// Compiled into singa.
    BuiltIn,
    /// Loaded from a plugin library.
    Plugin(String),
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provenance::BuiltIn => f.write_str("built in"),
            Provenance::Plugin(p) => write!(f, "plugin {p}"),
        }
    }
}

/// Known layer and updater types, by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    layers: Vec<(LayerType, Provenance)>,
    updaters: Vec<(UpdaterType, Provenance)>,
}

impl Registry {
    /// The built-in types of `singa-layers`.
    pub fn builtin() -> Registry {
        let mut r = Registry::default();
        for t in singa_layers::layer_types() {
            r.add_layer(t, Provenance::BuiltIn)
                .expect("built-in layer names are unique");
        }
        for t in singa_layers::updater_types() {
            r.add_updater(t, Provenance::BuiltIn)
                .expect("built-in updater names are unique");
        }
        r
    }

    /// Adds a layer type; a name already taken is an error naming both origins.
    pub fn add_layer(&mut self, t: LayerType, from: Provenance) -> Result<()> {
        if let Some((_, existing)) = self.layers.iter().find(|(l, _)| l.name == t.name) {
            return Err(Error::invalid(format!(
                "layer type {:?} ({from}) is already defined ({existing})",
                t.name.as_str()
            )));
        }
        self.layers.push((t, from));
        Ok(())
    }

    /// Adds an updater type; a name already taken is an error naming both origins.
    pub fn add_updater(&mut self, t: UpdaterType, from: Provenance) -> Result<()> {
        if let Some((_, existing)) = self.updaters.iter().find(|(u, _)| u.name == t.name) {
            return Err(Error::invalid(format!(
                "updater type {:?} ({from}) is already defined ({existing})",
                t.name.as_str()
            )));
        }
        self.updaters.push((t, from));
        Ok(())
    }

    /// The layer type called `name`.
    pub fn layer(&self, name: &str) -> Option<&LayerType> {
        self.layers
            .iter()
            .find(|(t, _)| t.name == name)
            .map(|(t, _)| t)
    }

    /// The updater type called `name`.
    pub fn updater(&self, name: &str) -> Option<&UpdaterType> {
        self.updaters
            .iter()
            .find(|(t, _)| t.name == name)
            .map(|(t, _)| t)
    }

    /// Every layer type with its origin.
    pub fn layers(&self) -> impl Iterator<Item = (&LayerType, &Provenance)> {
        self.layers.iter().map(|(t, p)| (t, p))
    }

    /// Every updater type with its origin.
    pub fn updaters(&self) -> impl Iterator<Item = (&UpdaterType, &Provenance)> {
        self.updaters.iter().map(|(t, p)| (t, p))
    }

    /// The names of all layer types.
    pub fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|(t, _)| t.name.as_str()).collect()
    }

    /// The names of all updater types.
    pub fn updater_names(&self) -> Vec<&str> {
        self.updaters.iter().map(|(t, _)| t.name.as_str()).collect()
    }
}
