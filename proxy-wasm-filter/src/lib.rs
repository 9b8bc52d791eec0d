//! ratewall proxy-wasm filter (work in progress).
