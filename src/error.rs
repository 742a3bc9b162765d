//! How errors read where users see them: kubelet's pod events, Events and logs.

/// The error and its sources, deduplicated: kubelet shows only this string in the pod's events.
pub fn full_message(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}
