//! Snapshots of every rendered mail (template x locale), from a fixed context
//! with hostile data in it (HTML in the remark, `&` and `<>` in names).
use approvald::{
    domain::ids::Locale,
    mail::{Template, render, render::sample_context},
};

#[test]
fn rendered_mails() {
    for t in Template::ALL {
        for l in Locale::ALL {
            let r = render(t, l, &sample_context(l)).unwrap_or_else(|e| panic!("{t}/{l}: {e:#}"));
            let doc = format!(
                "Subject: {}\n\n--- text ---\n{}\n--- html ---\n{}",
                r.subject, r.text, r.html
            );
            insta::assert_snapshot!(format!("{}__{}", t.as_str(), l.as_str()), doc);
        }
    }
}

#[test]
fn missing_optional_fields_render_as_nothing() {
    let ctx = approvald::mail::MailContext {
        recipient_name: "Ann".into(),
        ..Default::default()
    };
    for t in Template::ALL {
        for l in Locale::ALL {
            let r = render(t, l, &ctx).unwrap();
            for part in [&r.subject, &r.text] {
                assert!(
                    !part.contains("none") && !part.contains("undefined"),
                    "{t}/{l}: {part}"
                );
            }
            assert!(
                !r.html.contains(">none")
                    && !r.html.contains("none<")
                    && !r.html.contains("undefined"),
                "{t}/{l}"
            );
        }
    }
}
