//! A run with 1,000 destination instances and hundreds of ejections: the traffic chart
//! draws the top instances plus the mean of the rest (and says so), and window labels
//! never overlap.

use std::collections::BTreeMap;

use reports::figures::TOP_INSTANCES;
use reports::model::{Event, Run, Second, Workload};

fn big_run() -> Run {
    let pods: Vec<String> = (0..1000).map(|i| format!("svc-v1-{i}")).collect();
    let series: Vec<Second> = (0..60)
        .map(|t| Second {
            t,
            requests: 1000,
            success: 1000,
            pods: pods.iter().enumerate().map(|(i, p)| (p.clone(), 1 + (i as u64 + t) % 3)).collect::<BTreeMap<_, _>>(),
        })
        .collect();
    let mut events = Vec::new();
    for i in 0..300 {
        let at = 1000.0 + 150.0 * i as f64;
        let pod = &pods[i % pods.len()];
        events.push(Event {
            at_ms: at,
            kind: "ejected".into(),
            detail: format!("client-0 ejected {pod} from outbound|80||svc (consecutive_5xx; for 5s)"),
            ..Default::default()
        });
        events.push(Event {
            at_ms: at + 5000.0,
            kind: "readmitted".into(),
            detail: format!("client-0 readmitted {pod} to outbound|80||svc"),
            ..Default::default()
        });
    }
    Run {
        scenario: "big".into(),
        duration_ms: 60_000,
        workloads: vec![Workload { name: "w".into(), to: "svc".into(), series, ..Default::default() }],
        events,
        ..Default::default()
    }
}

/// `(x, y, text)` of every `<text>` element.
fn texts(svg: &str) -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find("<text ") {
        let tag = &rest[i..];
        let close = tag.find('>').expect("tag closes");
        let end = tag.find("</text>").expect("text closes");
        let get = |name: &str| -> i32 {
            let j = tag[..close].find(&format!(" {name}=\"")).expect("attribute") + name.len() + 3;
            tag[j..j + tag[j..].find('"').expect("quote")].parse().expect("integer")
        };
        out.push((get("x"), get("y"), tag[close + 1..end].trim().to_string()));
        rest = &tag[end..];
    }
    out
}

#[test]
fn traffic_of_1000_instances_draws_the_top_ones_and_the_mean_of_the_rest() {
    let f = reports::figures::traffic(&big_run());
    assert_eq!(f.svg.matches("data-series=").count(), TOP_INSTANCES + 1, "top instances plus one aggregate");
    assert!(f.svg.contains(&format!("data-series=\"mean of {} others\"", 1000 - TOP_INSTANCES)));
    assert!(f.notes.iter().any(|n| n.contains(&format!("{TOP_INSTANCES} of 1000 instances drawn"))), "{:?}", f.notes);
}

#[test]
fn window_labels_never_overlap_even_with_hundreds_of_windows() {
    let f = reports::figures::traffic(&big_run());
    let is_tag = |s: &str| s.len() > 1 && s.starts_with(['E', 'F', 'W']) && s[1..].chars().all(|c| c.is_ascii_digit());
    let mut tags: Vec<(i32, i32, String)> = texts(&f.svg).into_iter().filter(|t| is_tag(&t.2)).collect();
    assert!(tags.len() >= 10, "some windows are labelled: {}", tags.len());
    tags.sort_by_key(|t| (t.1, t.0));
    for pair in tags.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.1 == b.1 {
            // 12.1 px sans-serif: at most 0.62 em per character.
            let width = (0.62 * 12.1 * a.2.len() as f64).ceil() as i32;
            assert!(b.0 >= a.0 + width, "{} at {} overlaps {} at {}", a.2, a.0, b.2, b.0);
        }
    }
}
