use super::*;

/// A stamped line as the writer stores it, `secs` after the epoch.
fn at(secs: i64, text: &str) -> String {
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap();
    format!("{} {text}", stamp(t))
}

const NS: i128 = 1_000_000_000;

/// Files of `max_size` bytes, two kept (the default's count).
fn limit(max_size: u64) -> Limits {
    Limits {
        max_size,
        max_files: 2,
    }
}

#[test]
fn stamps_are_fixed_width_and_read_back() {
    let t = OffsetDateTime::from_unix_timestamp_nanos(1_764_649_200_000_000_001).unwrap();
    let s = stamp(t);
    assert_eq!(s, "2025-12-02T04:20:00.000000001Z");
    assert_eq!(s.len(), STAMP);
    let line = format!("{s} hello\n");
    let (found, rest) = split_stamp(line.as_bytes());
    assert_eq!(found.map(|(n, _)| n), Some(1_764_649_200_000_000_001));
    assert_eq!(rest, b"hello\n");
    // Not a stamp: the line whole.
    for text in ["hello\n", "2025-12-02T04:20:00.000000001Zx", ""] {
        assert_eq!(split_stamp(text.as_bytes()), (None, text.as_bytes()));
    }
    let bad = "2025-13-02T04:20:00.000000001Z hello";
    assert_eq!(split_stamp(bad.as_bytes()).0, None);
}

#[test]
fn each_line_is_stamped_once_and_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let mut w = LogWriter::create(&path, Limits::default()).unwrap();
    w.write_all(b"one\ntw").unwrap();
    w.write_all(b"o\nthr").unwrap();
    drop(w);
    // Run again (a restart) in the middle of a line: the new run's
    // output starts a line of its own, with its own time.
    let mut w = LogWriter::create(&path, Limits::default()).unwrap();
    w.write_all(b"ee\n\nfour").unwrap();
    let raw = std::fs::read_to_string(&path).unwrap();
    assert_eq!(raw.lines().count(), 6, "{raw}");
    assert!(
        raw.lines().all(|l| split_stamp(l.as_bytes()).0.is_some()),
        "{raw}"
    );
    assert_eq!(tail(&path, None).unwrap(), b"one\ntwo\nthr\nee\n\nfour");
    assert_eq!(tail(&path, Some(2)).unwrap(), b"\nfour");
    let (shown, current) = read(
        &path,
        &Select {
            timestamps: true,
            ..Select::default()
        },
    )
    .unwrap();
    assert_eq!(shown, raw.as_bytes(), "-t shows what is stored");
    assert_eq!(current, raw.len() as u64);
}

#[test]
fn rotates_at_the_limit_and_a_cut_line_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    // "first" and its stamp take 37 bytes; the next line and its own
    // (82) would not fit in any file: it is cut at 80, 12 bytes on, and
    // goes on after a time of its own (70 bytes); "last" then starts a
    // third file.
    let long = "a line much longer than what is left of the limit\n";
    let limits = Limits {
        max_size: 80,
        max_files: 3,
    };
    let mut w = LogWriter::create(&path, limits).unwrap();
    w.write_all(b"first\n").unwrap();
    w.write_all(long.as_bytes()).unwrap();
    w.write_all(b"last\n").unwrap();
    let current = std::fs::read_to_string(&path).unwrap();
    let cut = std::fs::read_to_string(older(&path)).unwrap();
    let before = std::fs::read_to_string(older_n(&path, 2)).unwrap();
    assert!(before.ends_with(&long[..12]), "{before}");
    assert_eq!(before.len(), 80);
    assert!(current.ends_with(" last\n"), "{current}");
    assert_eq!(split_stamp(cut.as_bytes()).1, &long.as_bytes()[12..]);
    // The files read as one log: the cut line is whole again.
    assert_eq!(
        String::from_utf8(tail(&path, None).unwrap()).unwrap(),
        format!("first\n{long}last\n")
    );
    assert_eq!(
        String::from_utf8(tail(&path, Some(2)).unwrap()).unwrap(),
        format!("{long}last\n")
    );
}

#[test]
fn a_whole_line_that_does_not_fit_starts_the_next_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let mut w = LogWriter::create(&path, limit(100)).unwrap();
    // 37 bytes, then 31 + 40: the second goes to a file of its own.
    w.write_all(b"first\n").unwrap();
    w.write_all(format!("{}\n", "x".repeat(39)).as_bytes())
        .unwrap();
    let before = std::fs::read_to_string(older(&path)).unwrap();
    let current = std::fs::read_to_string(&path).unwrap();
    assert!(
        before.ends_with(" first\n") && before.len() == 37,
        "{before}"
    );
    assert_eq!(current.len(), 71, "{current}");
    assert_eq!(
        split_stamp(current.as_bytes()).1,
        format!("{}\n", "x".repeat(39)).as_bytes()
    );
}

#[test]
fn max_files_keeps_that_many_files_and_reads_them_as_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    // Each line and its stamp (38 bytes) fill a file: one line a file.
    let limits = Limits {
        max_size: 38,
        max_files: 3,
    };
    let mut w = LogWriter::create(&path, limits).unwrap();
    for n in 1..=5 {
        w.write_all(format!("line {n}\n").as_bytes()).unwrap();
    }
    // The current file and two older: lines 3, 4 and 5; no fourth file.
    assert!(older_n(&path, 2).exists());
    assert!(!older_n(&path, 3).exists());
    assert_eq!(
        String::from_utf8(tail(&path, None).unwrap()).unwrap(),
        "line 3\nline 4\nline 5\n"
    );
    // One file: it starts again empty when full.
    let one = dir.path().join("one.log");
    let limits = Limits {
        max_size: 38,
        max_files: 1,
    };
    let mut w = LogWriter::create(&one, limits).unwrap();
    for n in 1..=3 {
        w.write_all(format!("line {n}\n").as_bytes()).unwrap();
    }
    assert!(!older(&one).exists());
    assert_eq!(
        String::from_utf8(tail(&one, None).unwrap()).unwrap(),
        "line 3\n"
    );
}

#[test]
fn tail_counts_lines_across_both_files_with_and_without_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    // An older husk's log, without stamps, then a stamped one that goes
    // on with its unfinished line.
    std::fs::write(older(&path), b"one\ntwo\nthr").unwrap();
    std::fs::write(
        &path,
        format!("{}{}{}", at(5, "ee\n"), at(6, "four\n"), at(7, "five")),
    )
    .unwrap();
    assert_eq!(tail(&path, Some(0)).unwrap(), b"");
    assert_eq!(tail(&path, Some(1)).unwrap(), b"five");
    assert_eq!(tail(&path, Some(3)).unwrap(), b"three\nfour\nfive");
    assert_eq!(
        tail(&path, Some(99)).unwrap(),
        b"one\ntwo\nthree\nfour\nfive"
    );
    let none = dir.path().join("missing.log");
    assert_eq!(tail(&none, None).unwrap(), b"");
}

#[test]
fn since_and_until_select_lines_by_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    std::fs::write(older(&path), at(10, "ten\n")).unwrap();
    std::fs::write(
        &path,
        format!(
            "{}{}{}",
            at(20, "twenty\n"),
            at(30, "thirty\n"),
            at(40, "forty\n")
        ),
    )
    .unwrap();
    let show = |select: Select| String::from_utf8(read(&path, &select).unwrap().0).unwrap();
    let since = |s: i128| Select {
        since: Some(s * NS),
        ..Select::default()
    };
    assert_eq!(show(since(20)), "twenty\nthirty\nforty\n");
    assert_eq!(show(since(41)), "");
    assert_eq!(
        show(Select {
            until: Some(30 * NS),
            ..since(11)
        }),
        "twenty\nthirty\n"
    );
    assert_eq!(
        show(Select {
            lines: Some(1),
            timestamps: true,
            ..since(0)
        }),
        at(40, "forty\n")
    );
}

/// Feeds `stored` to a [`Shown`] in pieces of `piece` bytes.
fn shown_in_pieces(files: &[String], piece: usize, select: &Select) -> String {
    let mut out = Vec::new();
    let mut shown = Shown {
        select,
        line_start: true,
        head: Vec::new(),
        keep: true,
        continuing: false,
    };
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            shown.next_file();
        }
        for chunk in file.as_bytes().chunks(piece) {
            shown.feed(chunk, &mut out).unwrap();
        }
    }
    shown.finish(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn what_arrives_is_shown_whatever_its_pieces() {
    // A line a rotation cut (the second file starts with a stamp in the
    // middle of it), an empty line, a last line without its newline.
    let files = [
        format!("{}{}", at(10, "ten\n"), at(20, "twen")),
        format!("{}{}{}", at(21, "ty\n"), at(30, "\n"), at(40, "forty")),
    ];
    for piece in [1, 2, 7, 31, 1000] {
        assert_eq!(
            shown_in_pieces(&files, piece, &Select::default()),
            "ten\ntwenty\n\nforty",
            "pieces of {piece}"
        );
        let select = Select {
            since: Some(15 * NS),
            timestamps: true,
            ..Select::default()
        };
        assert_eq!(
            shown_in_pieces(&files, piece, &select),
            format!("{}{}{}", at(20, "twenty\n"), at(30, "\n"), at(40, "forty")),
            "pieces of {piece}"
        );
    }
    // An older husk's short unfinished line is shown at the end.
    assert_eq!(
        shown_in_pieces(&["$ ".to_string()], 1, &Select::default()),
        "$ "
    );
}

#[test]
fn follow_reads_on_through_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    // "early" (37 bytes) and the next line (81) fit; "end" rotates.
    let mut w = LogWriter::create(&path, limit(128)).unwrap();
    w.write_all(b"early\n").unwrap();
    let offset = std::fs::metadata(&path).unwrap().len();
    let mut out = Vec::new();
    let mut polls = 0;
    follow(&path, offset, &Select::default(), &mut out, || {
        polls += 1;
        match polls {
            1 => {
                w.write_all(b"more, and then rotated in the middle of this line\nend")
                    .unwrap();
                false
            }
            _ => true,
        }
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "more, and then rotated in the middle of this line\nend"
    );
    assert!(older(&path).exists(), "the log was rotated meanwhile");
}

#[test]
fn the_none_driver_keeps_nothing_and_removes_an_earlier_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    for name in ["console.log", "console.log.1", "console.log.2"] {
        std::fs::write(dir.path().join(name), "from before\n").unwrap();
    }
    let mut log = LogWriter::none(&path);
    log.write_all(b"said to nobody\n").unwrap();
    log.flush().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
