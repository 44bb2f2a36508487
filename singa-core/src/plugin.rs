//! The plugin entry point: what a shared library exports so that singa can load its layer and
//! updater types at run time.
//!
//! A plugin is a `cdylib` crate that depends on `singa-core` only and ends with
//!
//! ```ignore
//! singa_core::export_plugin! {
//!     layers: [Swish],
//!     updaters: [],
//! }
//! ```
//!
//! The macro exports two symbols:
//! - [`INTERFACE_SYMBOL`], an [`InterfaceStamp`] with the interface version the plugin was
//!   built against. The host reads it first, with nothing but a symbol lookup, so that a plugin
//!   from another version is refused with both versions named before any layout is compared;
//! - `abi_stable`'s root module ([`PluginModule`]): the plugin's name and version and the
//!   constructors of its types. `abi_stable` checks its layout against the host's when it loads.
//!
//! Every function the macro exports catches panics, and so does every method of the layers and
//! updaters it hands out ([`layer_box`]), their drop included; the host's parameter factory,
//! which plugin layers call back, catches its own. A panic becomes an [`Error`] naming the
//! plugin and the type, not an unwind across the library boundary (which would abort).

use crate::error::{catch_panic, Error, Result};
use crate::layer::{layer_box, LayerBox, LayerDef, LayerType};
use crate::updater::{updater_box, UpdaterBox, UpdaterDef, UpdaterType};
use crate::Fields;
use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RStr, RVec};
use abi_stable::StableAbi;

/// The version of the plugin-facing interface: the traits, the types in their signatures and
/// [`PluginModule`]. Plugins built against a version with another major (or, before 1.0,
/// minor) number are refused.
pub const INTERFACE_VERSION: &str = "0.5.0";

/// The name of the symbol that holds a plugin's [`InterfaceStamp`].
pub const INTERFACE_SYMBOL: &str = "singa_plugin_interface";

/// The longest interface version an [`InterfaceStamp`] holds.
const STAMP_CAPACITY: usize = 32;

/// Marks the stamp as singa's (a library may export a symbol of the same name by chance).
const STAMP_MAGIC: [u8; 8] = *b"singaPLG";

/// The interface version a plugin was built against, as plain bytes with a fixed layout that
/// will never change, so that any host can read it from any plugin.
#[repr(C)]
pub struct InterfaceStamp {
    magic: [u8; 8],
    len: u32,
    bytes: [u8; STAMP_CAPACITY],
}

impl InterfaceStamp {
    /// A stamp for `version` (at most 32 bytes; longer ones fail to compile in the macro).
    pub const fn new(version: &str) -> InterfaceStamp {
        let v = version.as_bytes();
        assert!(v.len() <= STAMP_CAPACITY, "interface version too long");
        let mut bytes = [0u8; STAMP_CAPACITY];
        let mut i = 0;
        while i < v.len() {
            bytes[i] = v[i];
            i += 1;
        }
        InterfaceStamp {
            magic: STAMP_MAGIC,
            len: v.len() as u32,
            bytes,
        }
    }

    /// The version, or `None` if the bytes are not a stamp.
    pub fn version(&self) -> Option<&str> {
        if self.magic != STAMP_MAGIC || self.len as usize > STAMP_CAPACITY {
            return None;
        }
        std::str::from_utf8(&self.bytes[..self.len as usize]).ok()
    }
}

/// Whether a plugin built against interface `plugin` can be loaded by a host on `host`: the
/// same major version, and before 1.0 the same minor (semver's rule). `abi_stable` then
/// checks the root module's layout (and its version with its own rule).
pub fn interface_compatible(host: &str, plugin: &str) -> bool {
    fn parts(v: &str) -> Option<(u64, u64)> {
        let mut it = v.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
        Some((major, minor))
    }
    match (parts(host), parts(plugin)) {
        (Some((hmaj, hmin)), Some((pmaj, pmin))) => hmaj == pmaj && (hmaj > 0 || hmin == pmin),
        _ => false,
    }
}

/// The root module a plugin exports: who it is and what it provides.
///
/// A prefix type: fields are only ever added at the end, so an older host can read a newer
/// plugin's module as far as it knows it.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The interface version the plugin was built against (as in its [`InterfaceStamp`]).
    pub interface_version: RStr<'static>,
    /// The plugin's name (its crate's name).
    pub name: RStr<'static>,
    /// The plugin's own version (its crate's version).
    pub version: RStr<'static>,
    /// The layer types the plugin provides.
    pub layer_types: extern "C" fn() -> RResult<RVec<LayerType>, Error>,
    /// The updater types the plugin provides.
    #[sabi(last_prefix_field)]
    pub updater_types: extern "C" fn() -> RResult<RVec<UpdaterType>, Error>,
}

impl RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "singa_plugin";
    const NAME: &'static str = "singa plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(INTERFACE_VERSION);
}

/// Names the plugin a type comes from, so that errors say where they were raised. The export
/// macro implements it for a marker type of each plugin.
pub trait PluginInfo: 'static {
    /// The plugin's name.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str;
}

/// The registry entry of layer `L` provided by plugin `P`: like
/// [`layer_type`](crate::layer_type), but panics and errors name the plugin too.
pub fn plugin_layer_type<L: LayerDef, P: PluginInfo>() -> LayerType {
    LayerType {
        create: create_plugin_layer::<L, P>,
        ..crate::layer_type::<L>()
    }
}

/// The registry entry of updater `U` provided by plugin `P`.
pub fn plugin_updater_type<U: UpdaterDef, P: PluginInfo>() -> UpdaterType {
    UpdaterType {
        create: create_plugin_updater::<U, P>,
        ..crate::updater_type::<U>()
    }
}

/// A type's name with the plugin it comes from, as errors show it.
fn provided_by<P: PluginInfo>(name: &str) -> String {
    format!("{name} of plugin {} {}", P::NAME, P::VERSION)
}

extern "C" fn create_plugin_layer<L: LayerDef, P: PluginInfo>(
    fields: &Fields,
) -> RResult<LayerBox, Error> {
    let name = provided_by::<P>(L::TYPE);
    catch_panic(format_args!("layer type {name}"), || {
        Ok(layer_box(&name, L::new(fields)?))
    })
    .into()
}

extern "C" fn create_plugin_updater<U: UpdaterDef, P: PluginInfo>(
    fields: &Fields,
) -> RResult<UpdaterBox, Error> {
    let name = provided_by::<P>(U::TYPE);
    catch_panic(format_args!("updater type {name}"), || {
        Ok(updater_box(&name, U::new(fields)?))
    })
    .into()
}

/// Runs a plugin's type listing, turning a panic into an error naming the plugin.
pub fn list_types<T, P: PluginInfo>(f: impl FnOnce() -> Vec<T>) -> RResult<RVec<T>, Error> {
    let r: Result<RVec<T>> = catch_panic(format_args!("plugin {}", P::NAME), || Ok(f().into()));
    r.into()
}

/// What the export macro needs from `abi_stable`, so that plugin crates depend on
/// `singa-core` alone. Not part of the public interface.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
        ROOT_MODULE_LOADER_NAME,
    };
    pub use abi_stable::prefix_type::PrefixTypeTrait;
}

/// Exports a plugin's layer and updater types (see the [module docs](crate::plugin)).
///
/// ```ignore
/// singa_core::export_plugin! {
///     layers: [Swish, Gelu],
///     updaters: [Lion],
/// }
/// ```
///
/// Each listed type implements [`LayerDef`](crate::LayerDef) or
/// [`UpdaterDef`](crate::UpdaterDef). The plugin's name and version are its crate's.
#[macro_export]
macro_rules! export_plugin {
    (layers: [$($layer:ty),* $(,)?], updaters: [$($updater:ty),* $(,)?] $(,)?) => {
        $crate::export_plugin! {
            @interface $crate::plugin::INTERFACE_VERSION,
            layers: [$($layer),*],
            updaters: [$($updater),*],
        }
    };
    // Builds a plugin that claims another interface version: only for testing the host's
    // refusal of such plugins.
    (@interface $interface:expr, layers: [$($layer:ty),* $(,)?], updaters: [$($updater:ty),* $(,)?] $(,)?) => {
        #[doc(hidden)]
        pub struct __SingaPlugin;

        impl $crate::plugin::PluginInfo for __SingaPlugin {
            const NAME: &'static str = env!("CARGO_PKG_NAME");
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }

        #[doc(hidden)]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static singa_plugin_interface: $crate::plugin::InterfaceStamp =
            $crate::plugin::InterfaceStamp::new($interface);

        extern "C" fn __singa_plugin_layer_types(
        ) -> $crate::abi::RResult<$crate::abi::RVec<$crate::LayerType>, $crate::Error> {
            $crate::plugin::list_types::<_, __SingaPlugin>(|| {
                vec![$($crate::plugin::plugin_layer_type::<$layer, __SingaPlugin>()),*]
            })
        }

        extern "C" fn __singa_plugin_updater_types(
        ) -> $crate::abi::RResult<$crate::abi::RVec<$crate::UpdaterType>, $crate::Error> {
            $crate::plugin::list_types::<_, __SingaPlugin>(|| {
                vec![$($crate::plugin::plugin_updater_type::<$updater, __SingaPlugin>()),*]
            })
        }

        fn __singa_plugin_module() -> $crate::plugin::PluginModuleRef {
            use $crate::plugin::__private::PrefixTypeTrait;
            $crate::plugin::PluginModule {
                interface_version: $crate::abi::RStr::from_str($interface),
                name: $crate::abi::RStr::from_str(env!("CARGO_PKG_NAME")),
                version: $crate::abi::RStr::from_str(env!("CARGO_PKG_VERSION")),
                layer_types: __singa_plugin_layer_types,
                updater_types: __singa_plugin_updater_types,
            }
            .leak_into_prefix()
        }

        // What `abi_stable`'s `#[export_root_module]` writes, spelled out so that the plugin
        // needs no `abi_stable` dependency of its own; a test checks the symbol name.
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __SINGA_PLUGIN_ROOT_MODULE: $crate::plugin::__private::LibHeader = {
            extern "C" fn erased() -> $crate::plugin::__private::RootModuleResult {
                $crate::plugin::__private::__call_root_module_loader(__singa_plugin_module)
            }
            // SAFETY: `erased` returns the `PluginModuleRef` that `__singa_plugin_module`
            // builds, which is what `from_constructor` is told to expect.
            unsafe {
                $crate::plugin::__private::LibHeader::from_constructor::<
                    $crate::plugin::PluginModuleRef,
                >(erased, $crate::plugin::__private::CheckTypeLayout::Yes)
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_macro_exports_abi_stables_root_module_symbol() {
        assert_eq!(
            __private::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn stamps_round_trip_and_reject_garbage() {
        let s = InterfaceStamp::new("0.1.0");
        assert_eq!(s.version(), Some("0.1.0"));
        let mut bad = InterfaceStamp::new("0.1.0");
        bad.magic = *b"notsinga";
        assert_eq!(bad.version(), None);
    }

    #[test]
    fn compatibility_follows_semver() {
        assert!(interface_compatible("0.1.0", "0.1.3"));
        assert!(!interface_compatible("0.1.0", "0.2.0"));
        assert!(!interface_compatible("0.1.0", "1.1.0"));
        assert!(interface_compatible("1.2.0", "1.0.0"));
        assert!(!interface_compatible("0.1.0", "garbage"));
    }
}
