//! A JUnit XML report of `comfix test`, the format CI systems (GitLab, Jenkins, GitHub's test
//! reporters) show: one test case per workflow.

use super::test::{Status, WorkflowReport};

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {}
            c => out.push(c),
        }
    }
    out
}

/// The report of `version`'s workflows. Failures are what the workflow did wrong (rejected,
/// a node failed, missing needs, invalid); errors are what stopped it from being judged (ComfyUI
/// did not start, a timeout, an interruption).
pub fn report(version: &str, reports: &[WorkflowReport]) -> String {
    let failures = reports
        .iter()
        .filter(|r| matches!(r.status, Status::Failed | Status::Missing | Status::Invalid))
        .count();
    let errors = reports
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                Status::NotRun | Status::TimedOut | Status::Interrupted
            )
        })
        .count();
    let time: f64 = reports.iter().map(|r| r.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">\n",
        reports.len()
    ));
    out.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">\n",
        escape(&format!("comfix test {version}")),
        reports.len()
    ));
    for r in reports {
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(version),
            escape(&r.workflow),
            r.seconds
        ));
        let message = r.message.clone().unwrap_or_default();
        let body = {
            let mut lines = vec![message.clone()];
            lines.extend(r.errors.iter().map(|e| e.to_string()));
            lines.join("\n")
        };
        let first = message.lines().next().unwrap_or("").to_string();
        let tag = match r.status {
            Status::Passed => None,
            Status::Failed | Status::Missing | Status::Invalid => Some("failure"),
            Status::NotRun | Status::TimedOut | Status::Interrupted => Some("error"),
        };
        match tag {
            None => out.push_str("/>\n"),
            Some(tag) => out.push_str(&format!(
                ">\n      <{tag} type=\"{}\" message=\"{}\">{}</{tag}>\n    </testcase>\n",
                serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                escape(&first),
                escape(&body)
            )),
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_escaped_and_counted() {
        let mut failed = WorkflowReport {
            workflow: "a<&>.json".into(),
            status: Status::Failed,
            prompt_id: None,
            message: Some("node 2 (X) failed: \"bad\" \u{1}".into()),
            missing: Default::default(),
            errors: Vec::new(),
            outputs: Vec::new(),
            seconds: 1.5,
        };
        let passed = WorkflowReport {
            workflow: "b.json".into(),
            status: Status::Passed,
            message: None,
            ..failed.clone()
        };
        failed.status = Status::Failed;
        let timed_out = WorkflowReport {
            workflow: "c.json".into(),
            status: Status::TimedOut,
            ..failed.clone()
        };
        let xml = report("v1", &[failed, passed, timed_out]);
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"1\" time=\"4.500\""),
            "{xml}"
        );
        assert!(xml.contains("name=\"a&lt;&amp;&gt;.json\""), "{xml}");
        assert!(
            xml.contains("message=\"node 2 (X) failed: &quot;bad&quot; \""),
            "{xml}"
        );
        assert!(
            xml.contains("<testcase classname=\"v1\" name=\"b.json\" time=\"1.500\"/>"),
            "{xml}"
        );
        assert!(xml.contains("<error type=\"timed_out\""), "{xml}");
    }
}
