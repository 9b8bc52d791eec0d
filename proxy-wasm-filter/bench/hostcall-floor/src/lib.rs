//! The host calls of ratewall's local allow path and nothing else: the floor of any filter
//! that keeps exact counters in shared data.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(F))
    }
}
struct F;
impl Context for F {}
impl HttpContext for F {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let u = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-user-id")
            .ok()
            .flatten();
        let t = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-tenant-id")
            .ok()
            .flatten();
        let _ = hostcalls::get_current_time();
        let key = "floor:slot";
        let (v, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let mut v = v.unwrap_or_else(|| vec![0u8; 64]);
        v[0] =
            v[0].wrapping_add(1 + u.map_or(0, |u| u.len() as u8) + t.map_or(0, |t| t.len() as u8));
        let _ = hostcalls::set_shared_data(key, Some(&v), cas);
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (n, v) in [
            ("x-ratelimit-limit", "1000000"),
            ("x-ratelimit-remaining", "999999"),
            ("x-ratelimit-reset", "1767225603"),
        ] {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, n, v);
        }
        Action::Continue
    }
}
