//! The server name (SNI) a ClientHello asks for, read from its first record.
//!
//! rustls' unbuffered server connection, which lariat drives so that it owns (and frees) the session's
//! buffers, does not report the SNI it saw; lariat reads it from the ClientHello's bytes before rustls
//! processes them. rustls still validates the whole ClientHello: a name is only reported for a
//! handshake that completes.

use rustls::pki_types::DnsName;

/// The host name in a ClientHello's `server_name` extension, lowercased as rustls does; `None` when
/// the record is not a ClientHello, the extension is absent, names an IP address or is not a valid DNS
/// name, or the ClientHello continues past its first record before the extension.
pub(super) fn server_name(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    // Record header: handshake (22), version, length.
    if r.u8()? != 22 {
        return None;
    }
    r.take(2)?;
    let len = r.u16()?;
    let mut r = Reader(r.take(len.min(r.0.len()))?);
    // Handshake header: ClientHello (1), 24-bit length (the message may run on into later records).
    if r.u8()? != 1 {
        return None;
    }
    r.take(3)?;
    r.take(2 + 32)?; // legacy version, random
    let session_id = usize::from(r.u8()?);
    r.take(session_id)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    r.take(compression)?;
    let extensions = r.u16()?;
    let mut ext = Reader(r.take(extensions.min(r.0.len()))?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let len = ext.u16()?;
        let body = ext.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(body);
        let list = names.u16()?;
        let mut names = Reader(names.take(list)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let len = names.u16()?;
            let name = names.take(len)?;
            if name_type != 0 {
                continue;
            }
            let name = std::str::from_utf8(name).ok()?;
            if name.parse::<std::net::IpAddr>().is_ok() {
                return None;
            }
            let dns = DnsName::try_from(name).ok()?;
            return Some(dns.as_ref().to_ascii_lowercase());
        }
        return None;
    }
    None
}

/// A cursor over bytes; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

#[cfg(test)]
mod tests {
    use super::server_name;

    /// A minimal ClientHello record with the given extensions block.
    fn hello(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut record = vec![22, 3, 1];
        record.extend((hs.len() as u16).to_be_bytes());
        record.extend(hs);
        record
    }

    fn sni(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        let mut ext = vec![0, 0];
        ext.extend((list.len() as u16).to_be_bytes());
        ext.extend(list);
        ext
    }

    #[test]
    fn finds_the_name_among_other_extensions() {
        let mut exts = vec![0, 10, 0, 2, 0, 29]; // supported_groups first
        exts.extend(sni(b"Example.COM"));
        assert_eq!(server_name(&hello(&exts)).as_deref(), Some("example.com"));
    }

    #[test]
    fn no_name_for_ip_addresses_garbage_or_truncation() {
        assert_eq!(server_name(&hello(&sni(b"127.0.0.1"))), None);
        assert_eq!(server_name(&hello(&sni(b"bad name!"))), None);
        assert_eq!(server_name(&hello(&[])), None);
        let full = hello(&sni(b"localhost"));
        for cut in 0..full.len() {
            assert_eq!(server_name(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), None);
    }
}
