//! Bindings generated from the WIT package `hearth:compute@0.1.0`, world
//! `computation`.
//!
//! The only module of the crate allowed `unsafe`: the generated glue lifts and lowers
//! values across the component boundary. The safe wrappers around it live in
//! [`crate::stores`], [`crate::output`] and [`crate::log`]; [`crate::computation!`]
//! uses the generated export macro.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
#![allow(clippy::all)]

wit_bindgen::generate!({
    path: "wit",
    world: "computation",
    // `computation!` expands, in the author's crate, to this macro.
    pub_export_macro: true,
    export_macro_name: "__export_computation",
    default_bindings_module: "hearth_sdk::__private::bindings",
});
