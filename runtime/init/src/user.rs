//! Resolving `run.user` against the image's own `/etc/passwd` and
//! `/etc/group`, as `docker run --user` does: no NSS, no host databases.

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group listing the user as a member.
    pub groups: Vec<u32>,
    /// The home directory from `/etc/passwd`, when the user is listed.
    pub home: Option<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("{0:?} is not a user: write NAME, UID, NAME:GROUP or UID:GID")]
    Malformed(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each well-formed `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` (`NAME`, `UID`, `NAME:GROUP`, `UID:GID`, mixed) with the
/// contents of the image's `/etc/passwd` and `/etc/group` (empty when the
/// image has none). A numeric uid not in passwd is allowed, with gid 0
/// unless given; a name must be listed.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp == Some("") {
        return Err(UserError::Malformed(spec.to_string()));
    }
    let entry = if is_id(user) {
        let uid: u32 = user
            .parse()
            .map_err(|_| UserError::Malformed(spec.to_string()))?;
        passwd_entries(passwd).find(|e| e.uid == uid)
    } else {
        Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| UserError::UnknownUser(user.to_string()))?,
        )
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user
            .parse()
            .map_err(|_| UserError::Malformed(spec.to_string()))?,
    };
    let gid = match grp {
        Some(g) if is_id(g) => g
            .parse()
            .map_err(|_| UserError::Malformed(spec.to_string()))?,
        Some(g) => group_entries(group)
            .find(|(name, _, _)| *name == g)
            .map(|(_, gid, _)| gid)
            .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.home.to_string()),
    })
}

/// A supplementary group as `--group-add` names it: a gid, or a name the
/// image's `/etc/group` (`group`) lists.
pub fn group_id(spec: &str, group: &str) -> Result<u32, UserError> {
    if is_id(spec) {
        return spec
            .parse()
            .map_err(|_| UserError::Malformed(spec.to_string()));
    }
    group_entries(group)
        .find(|(name, _, _)| *name == spec)
        .map(|(_, gid, _)| gid)
        .ok_or_else(|| UserError::UnknownGroup(spec.to_string()))
}

/// The name `passwd` gives `uid`, or the number itself when it has none
/// (as `ps` shows such a user).
pub fn name_of(uid: u32, passwd: &str) -> String {
    passwd_entries(passwd)
        .find(|e| e.uid == uid)
        .map_or_else(|| uid.to_string(), |e| e.name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        user:x:1000:1000:User:/home/user:/bin/sh\n\
        broken line\n\
        daemon:x:2:2::/:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nwheel:x:10:user,daemon\naudio:x:29:daemon\n";

    #[test]
    fn names_and_ids_resolve() {
        let u = resolve("user", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, [1000, 10]);
        assert_eq!(u.home.as_deref(), Some("/home/user"));
        let d = resolve("2:audio", PASSWD, GROUP).unwrap();
        assert_eq!((d.uid, d.gid, d.groups), (2, 29, vec![29, 10]));
        let r = resolve("root:1000", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (0, 1000));
    }

    #[test]
    fn added_groups_are_gids_or_names_in_the_image() {
        assert_eq!(group_id("audio", GROUP), Ok(29));
        assert_eq!(group_id("4242", ""), Ok(4242), "a gid needs no entry");
        assert_eq!(
            group_id("video", GROUP),
            Err(UserError::UnknownGroup("video".into()))
        );
        assert!(matches!(
            group_id("99999999999", GROUP),
            Err(UserError::Malformed(_))
        ));
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        let u = resolve("4242", "", "").unwrap();
        assert_eq!((u.uid, u.gid, u.home), (4242, 0, None));
        let u = resolve("4242:77", "", "").unwrap();
        assert_eq!((u.uid, u.gid, u.groups), (4242, 77, vec![77]));
    }

    #[test]
    fn unknown_and_malformed_are_errors() {
        assert_eq!(
            resolve("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve("user:staff", PASSWD, GROUP),
            Err(UserError::UnknownGroup("staff".into()))
        );
        for bad in ["", ":0", "0:", "99999999999"] {
            assert!(
                matches!(resolve(bad, PASSWD, GROUP), Err(UserError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
