//! Unit tests of the topic layout: builders, parser and segment validation.

use super::*;

const SID: &str = "0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

fn sid() -> Uuid {
    Uuid::try_parse(SID).expect("test uuid")
}

#[test]
fn device_topic_has_rae_id_and_hyphenated_session() {
    assert_eq!(
        device_topic("lab-a", &sid()).expect("valid"),
        format!("rae/v1/lab-a/devices/{SID}")
    );
}

#[test]
fn status_command_and_filter_topics_follow_the_layout() {
    assert_eq!(status_topic("box1"), Ok("rae/v1/box1/status".to_owned()));
    assert_eq!(
        command_topic("box1", "resync"),
        Ok("rae/v1/box1/commands/resync".to_owned())
    );
    assert_eq!(
        command_filter("box1"),
        Ok("rae/v1/box1/commands/#".to_owned())
    );
}

#[test]
fn built_topics_parse_back_to_their_inputs() {
    let device = device_topic("box1", &sid()).expect("valid");
    assert_eq!(
        parse_topic(&device),
        Ok(ParsedTopic::Device {
            rae_id: "box1".into(),
            session_id: sid()
        })
    );
    let status = status_topic("box1").expect("valid");
    assert_eq!(
        parse_topic(&status),
        Ok(ParsedTopic::Status {
            rae_id: "box1".into()
        })
    );
    let command = command_topic("box1", "resync").expect("valid");
    assert_eq!(
        parse_topic(&command),
        Ok(ParsedTopic::Command {
            rae_id: "box1".into(),
            name: "resync".into()
        })
    );
}

#[test]
fn empty_segment_is_rejected_by_name() {
    assert_eq!(
        validate_segment(""),
        Err(TopicError::Empty { what: "segment" })
    );
    assert_eq!(status_topic(""), Err(TopicError::Empty { what: "rae_id" }));
    assert_eq!(
        command_topic("box", ""),
        Err(TopicError::Empty {
            what: "command name"
        })
    );
}

#[test]
fn segment_of_max_len_is_accepted_and_one_more_byte_is_not() {
    assert_eq!(validate_segment(&"a".repeat(MAX_SEGMENT_LEN)), Ok(()));
    assert_eq!(
        validate_segment(&"a".repeat(MAX_SEGMENT_LEN + 1)),
        Err(TopicError::TooLong {
            what: "segment",
            len: MAX_SEGMENT_LEN + 1,
            max: MAX_SEGMENT_LEN
        })
    );
}

#[test]
fn segment_length_is_counted_in_bytes_not_chars() {
    let s = "é".repeat(MAX_SEGMENT_LEN / 2 + 1);
    assert!(matches!(
        validate_segment(&s),
        Err(TopicError::TooLong { len, .. }) if len == MAX_SEGMENT_LEN + 2
    ));
}

#[test]
fn wildcards_separators_nul_and_control_chars_are_forbidden() {
    for ch in ['+', '#', '/', '\0', '\n', '\u{7f}', '\u{85}'] {
        let segment = format!("ab{ch}cd");
        assert_eq!(
            validate_segment(&segment),
            Err(TopicError::ForbiddenChar {
                what: "segment",
                ch
            }),
            "{segment:?}"
        );
    }
}

#[test]
fn unicode_and_punctuation_segments_are_allowed() {
    assert_eq!(validate_segment("Lab_Ä-1.rack:3 @bench"), Ok(()));
}

#[test]
fn error_messages_name_the_segment_and_problem() {
    let err = command_topic("box", "a+b").expect_err("forbidden");
    assert_eq!(
        err.to_string(),
        "command name contains forbidden character '+'"
    );
    let err = status_topic(&"x".repeat(200)).expect_err("too long");
    assert_eq!(
        err.to_string(),
        "rae_id is 200 bytes long, more than the maximum of 128 bytes"
    );
}

#[test]
fn foreign_or_malformed_topics_are_not_rae_topics() {
    for topic in [
        "",
        "rae",
        "rae/v1",
        "rae/v1/",
        "rae/v2/box/status",
        "other/v1/box/status",
        "rae/v1/box",
        "rae/v1/box/status/extra",
        "rae/v1/box/devices",
        "rae/v1/box/devices/a/b",
        "rae/v1/box/unknown/x",
    ] {
        assert_eq!(
            parse_topic(topic),
            Err(TopicError::NotRaeTopic(topic.to_owned())),
            "{topic:?}"
        );
    }
}

#[test]
fn parsed_segments_are_validated() {
    assert_eq!(
        parse_topic("rae/v1//status"),
        Err(TopicError::Empty { what: "rae_id" })
    );
    assert_eq!(
        parse_topic("rae/v1/box/commands/#"),
        Err(TopicError::ForbiddenChar {
            what: "command name",
            ch: '#'
        })
    );
}

#[test]
fn session_id_must_be_a_lowercase_hyphenated_uuid() {
    let upper = SID.to_uppercase();
    let simple = SID.replace('-', "");
    for bad in ["not-a-uuid", upper.as_str(), simple.as_str()] {
        assert_eq!(
            parse_topic(&format!("rae/v1/box/devices/{bad}")),
            Err(TopicError::BadSessionId(bad.to_owned())),
            "{bad:?}"
        );
    }
}
