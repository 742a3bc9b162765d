//! Reads a PKCS#12 file with an empty password, as Key Vault exports a certificate's secret
//! and as Go's `x/crypto/pkcs12` (the plugin's) reads it: SHA-1 or SHA-256 MAC, bags
//! encrypted with `pbeWithSHAAnd3-KeyTripleDES-CBC` or `pbeWithSHAAnd40BitRC2-CBC`. Every
//! length is checked against the input; nesting is fixed by the format, counts are bounded.

use des::cipher::{BlockDecrypt, KeyInit, generic_array::GenericArray};

/// `data`.
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// `encryptedData`.
const OID_ENCRYPTED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x06];
/// `keyBag`.
const OID_KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x01,
];
/// `pkcs8ShroudedKeyBag`.
const OID_SHROUDED_KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x02,
];
/// `certBag`.
const OID_CERT_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x03,
];
/// `x509Certificate` in a cert bag.
const OID_X509: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x16, 0x01];
/// `pbeWithSHAAnd3-KeyTripleDES-CBC`.
const OID_PBE_3DES: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x03];
/// `pbeWithSHAAnd40BitRC2-CBC`.
const OID_PBE_RC2_40: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x06];
/// SHA-1.
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// SHA-256.
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// Subject key identifier.
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
/// Authority key identifier.
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];

/// Most bags read from one file: a key and its chain are a handful.
const MAX_BAGS: usize = 64;
/// Most key-derivation iterations accepted (Key Vault and OpenSSL use 2048): the derivation
/// runs on the mount's task, so a hostile answer must not make it long.
const MAX_ITERATIONS: u64 = 10_000;

/// A certificate's (authority key id, subject key id), either possibly absent.
#[derive(Debug, Default, Clone)]
struct KeyIds {
    authority: Option<Vec<u8>>,
    subject: Option<Vec<u8>>,
}

/// What a PKCS#12 file holds.
#[derive(Debug, Default)]
pub struct Bundle {
    /// Private keys, PKCS#8 DER, in file order.
    pub keys: Vec<Vec<u8>>,
    /// Certificates, DER, in file order.
    pub certificates: Vec<Vec<u8>>,
}

/// Decodes `pfx` with the empty password (as two zero bytes, else none, as Go does).
pub fn decode(pfx: &[u8]) -> Result<Bundle, String> {
    let fail = |what: &str| format!("the PKCS#12 secret is malformed: {what}");
    let mut outer = Reader::new(pfx).sequence().map_err(|e| fail(&e))?;
    let version = outer.integer().map_err(|e| fail(&e))?;
    if version != 3 {
        return Err(fail("its version is not 3"));
    }
    let mut auth_safe = outer.sequence().map_err(|e| fail(&e))?;
    if auth_safe.oid().map_err(|e| fail(&e))? != OID_DATA {
        return Err(
            "the PKCS#12 secret is signed, not password-protected; it is not supported".to_owned(),
        );
    }
    let content = auth_safe
        .explicit(0)
        .and_then(|mut c| c.octets())
        .map_err(|e| fail(&e))?;
    let password = match outer.is_empty() {
        true => vec![0, 0],
        false => {
            let mac = outer.sequence().map_err(|e| fail(&e))?;
            mac_password(mac, content)?
        }
    };
    let mut bundle = Bundle::default();
    let mut safes = Reader::new(content).sequence().map_err(|e| fail(&e))?;
    let mut bags = 0;
    while !safes.is_empty() {
        let mut info = safes.sequence().map_err(|e| fail(&e))?;
        let kind = info.oid().map_err(|e| fail(&e))?;
        let mut value = info.explicit(0).map_err(|e| fail(&e))?;
        let plain;
        let contents: &[u8] = if kind == OID_DATA {
            value.octets().map_err(|e| fail(&e))?
        } else if kind == OID_ENCRYPTED_DATA {
            let mut data = value.sequence().map_err(|e| fail(&e))?;
            data.integer().map_err(|e| fail(&e))?;
            let mut encrypted = data.sequence().map_err(|e| fail(&e))?;
            encrypted.oid().map_err(|e| fail(&e))?;
            let algorithm = encrypted.sequence().map_err(|e| fail(&e))?;
            let ciphertext = encrypted.implicit_octets(0).map_err(|e| fail(&e))?;
            plain = decrypt(algorithm, &ciphertext, &password)?;
            &plain
        } else {
            return Err(fail("an unknown content type"));
        };
        let mut list = Reader::new(contents).sequence().map_err(|e| fail(&e))?;
        while !list.is_empty() {
            bags += 1;
            if bags > MAX_BAGS {
                return Err(format!(
                    "the PKCS#12 secret holds more than {MAX_BAGS} entries"
                ));
            }
            let mut bag = list.sequence().map_err(|e| fail(&e))?;
            let kind = bag.oid().map_err(|e| fail(&e))?;
            let mut value = bag.explicit(0).map_err(|e| fail(&e))?;
            if kind == OID_CERT_BAG {
                let mut cert = value.sequence().map_err(|e| fail(&e))?;
                if cert.oid().map_err(|e| fail(&e))? != OID_X509 {
                    return Err(fail("a certificate that is not X.509"));
                }
                let der = cert
                    .explicit(0)
                    .and_then(|mut c| c.octets())
                    .map_err(|e| fail(&e))?;
                bundle.certificates.push(der.to_vec());
            } else if kind == OID_SHROUDED_KEY_BAG {
                let mut key = value.sequence().map_err(|e| fail(&e))?;
                let algorithm = key.sequence().map_err(|e| fail(&e))?;
                let ciphertext = key.octets().map_err(|e| fail(&e))?;
                bundle.keys.push(decrypt(algorithm, ciphertext, &password)?);
            } else if kind == OID_KEY_BAG {
                bundle
                    .keys
                    .push(value.element(0x30).map_err(|e| fail(&e))?.to_vec());
            } else {
                return Err(fail("an entry of an unsupported bag type"));
            }
        }
    }
    Ok(bundle)
}

/// The certificates from leaf to root as the plugin chains them (a certificate's authority
/// key id matched to another's subject key id); ones off that chain are left out, as the
/// plugin leaves them.
pub fn leaf_first(certs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let ids: Vec<KeyIds> = certs
        .iter()
        .map(|c| key_ids(c).unwrap_or_default())
        .collect();
    let mut parent = vec![None; certs.len()];
    let mut is_parent = vec![false; certs.len()];
    for i in 0..certs.len() {
        for j in 0..certs.len() {
            if i == j {
                continue;
            }
            let (aki, ski) = (&ids[i].authority, &ids[j].subject);
            if aki.is_none() && ski.is_none() {
                continue;
            }
            if aki.as_deref().unwrap_or_default() == ski.as_deref().unwrap_or_default() {
                is_parent[j] = true;
                parent[i] = Some(j);
                break;
            }
        }
    }
    let Some(mut node) = (0..certs.len()).find(|i| !is_parent[*i]) else {
        return certs;
    };
    let mut order = vec![node];
    while let Some(next) = parent[node] {
        if order.len() >= certs.len() || order.contains(&next) {
            return certs;
        }
        order.push(next);
        node = next;
    }
    order.into_iter().map(|i| certs[i].clone()).collect()
}

/// (authority key id, subject key id) of a certificate, if it has them.
fn key_ids(cert: &[u8]) -> Result<KeyIds, String> {
    let mut tbs = Reader::new(cert).sequence()?.sequence()?;
    let (mut aki, mut ski) = (None, None);
    while !tbs.is_empty() {
        let (tag, body) = tbs.any()?;
        if tag != 0xa3 {
            continue;
        }
        let mut extensions = Reader::new(body).sequence()?;
        while !extensions.is_empty() {
            let mut extension = extensions.sequence()?;
            let oid = extension.oid()?;
            if extension.peek() == Some(0x01) {
                extension.any()?;
            }
            let value = extension.octets()?;
            if oid == OID_SKI {
                ski = Some(Reader::new(value).octets()?.to_vec());
            } else if oid == OID_AKI {
                let mut fields = Reader::new(value).sequence()?;
                if fields.peek() == Some(0x80) {
                    aki = Some(fields.any()?.1.to_vec());
                }
            }
        }
    }
    Ok(KeyIds {
        authority: aki,
        subject: ski,
    })
}

/// Which password the MAC was made with: two zero bytes (the standard's empty password),
/// else none at all (what some tools write).
fn mac_password(mut mac: Reader<'_>, content: &[u8]) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("the PKCS#12 secret's MAC is malformed: {what}");
    let mut digest_info = mac.sequence().map_err(fail)?;
    let mut algorithm = digest_info.sequence().map_err(fail)?;
    let hash = match algorithm.oid().map_err(fail)? {
        OID_SHA1 => Hash::Sha1,
        OID_SHA256 => Hash::Sha256,
        _ => return Err("the PKCS#12 secret's MAC algorithm is not supported".to_owned()),
    };
    let expected = digest_info.octets().map_err(fail)?;
    let salt = mac.octets().map_err(fail)?;
    let iterations = if mac.is_empty() {
        1
    } else {
        mac.integer().map_err(fail)?
    };
    let iterations = check_iterations(iterations)?;
    for password in [vec![0u8, 0], Vec::new()] {
        let key = derive(hash, &password, salt, 3, iterations, hash.len());
        let algorithm = match hash {
            Hash::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => ring::hmac::HMAC_SHA256,
        };
        let key = ring::hmac::Key::new(algorithm, &key);
        if ring::hmac::verify(&key, content, expected).is_ok() {
            return Ok(password);
        }
    }
    Err(
        "the PKCS#12 secret has a password (its MAC does not verify with an empty one); \
         Key Vault certificates have none"
            .to_owned(),
    )
}

fn check_iterations(iterations: u64) -> Result<u32, String> {
    if (1..=MAX_ITERATIONS).contains(&iterations) {
        Ok(iterations as u32)
    } else {
        Err(format!(
            "the PKCS#12 secret asks for {iterations} key-derivation iterations; at most \
             {MAX_ITERATIONS}"
        ))
    }
}

fn decrypt(
    mut algorithm: Reader<'_>,
    ciphertext: &[u8],
    password: &[u8],
) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("the PKCS#12 secret's encryption is malformed: {what}");
    let oid = algorithm.oid().map_err(fail)?;
    let mut params = algorithm.sequence().map_err(fail)?;
    let salt = params.octets().map_err(fail)?;
    let iterations = check_iterations(params.integer().map_err(fail)?)?;
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(8) {
        return Err(fail("the ciphertext is not whole blocks".to_owned()));
    }
    let iv = derive(Hash::Sha1, password, salt, 2, iterations, 8);
    let mut plain = ciphertext.to_vec();
    if oid == OID_PBE_3DES {
        let key = derive(Hash::Sha1, password, salt, 1, iterations, 24);
        let cipher = des::TdesEde3::new_from_slice(&key).map_err(|_| fail("key".to_owned()))?;
        cbc_decrypt(&mut plain, &iv, |block| {
            cipher.decrypt_block(GenericArray::from_mut_slice(block))
        });
    } else if oid == OID_PBE_RC2_40 {
        let key = derive(Hash::Sha1, password, salt, 1, iterations, 5);
        let cipher = rc2::Rc2::new_with_eff_key_len(&key, 40);
        cbc_decrypt(&mut plain, &iv, |block| {
            cipher.decrypt_block(GenericArray::from_mut_slice(block))
        });
    } else {
        return Err(
            "the PKCS#12 secret is encrypted with an algorithm the plugin does not read either \
             (only SHA-1 with 3DES or RC2-40); mount it with objectFormat: pfx"
                .to_owned(),
        );
    }
    let pad = *plain.last().unwrap_or(&0) as usize;
    if pad == 0
        || pad > 8
        || plain[plain.len() - pad..]
            .iter()
            .any(|b| *b as usize != pad)
    {
        return Err("the PKCS#12 secret does not decrypt with an empty password".to_owned());
    }
    plain.truncate(plain.len() - pad);
    Ok(plain)
}

fn cbc_decrypt(data: &mut [u8], iv: &[u8], decrypt_block: impl Fn(&mut [u8])) {
    let mut previous = iv.to_vec();
    for block in data.chunks_mut(8) {
        let saved = block.to_vec();
        decrypt_block(block);
        for (b, p) in block.iter_mut().zip(&previous) {
            *b ^= p;
        }
        previous = saved;
    }
}

#[derive(Clone, Copy)]
enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let algorithm = match self {
            Self::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &ring::digest::SHA256,
        };
        ring::digest::digest(algorithm, data).as_ref().to_vec()
    }
}

/// RFC 7292 appendix B.2: `n` bytes of key material of purpose `id` (1 key, 2 IV, 3 MAC).
fn derive(hash: Hash, password: &[u8], salt: &[u8], id: u8, iterations: u32, n: usize) -> Vec<u8> {
    const V: usize = 64;
    let stretch = |input: &[u8]| -> Vec<u8> {
        if input.is_empty() {
            return Vec::new();
        }
        let len = input.len().div_ceil(V) * V;
        input.iter().copied().cycle().take(len).collect()
    };
    let mut i = stretch(salt);
    i.extend(stretch(password));
    let d = [id; V];
    let mut out = Vec::with_capacity(n + hash.len());
    while out.len() < n {
        let mut a = hash.digest(&[&d[..], &i].concat());
        for _ in 1..iterations {
            a = hash.digest(&a);
        }
        out.extend_from_slice(&a);
        let b: Vec<u8> = a.iter().copied().cycle().take(V).collect();
        for block in i.chunks_mut(V) {
            let mut carry = 1u16;
            for (x, y) in block.iter_mut().zip(&b).rev() {
                let sum = *x as u16 + *y as u16 + carry;
                *x = sum as u8;
                carry = sum >> 8;
            }
        }
    }
    out.truncate(n);
    out
}

/// A DER reader over one level of a buffer.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element's tag and content.
    fn any(&mut self) -> Result<(u8, &'a [u8]), String> {
        let (tag, len, header) = match self.rest {
            [tag, first, ..] if first & 0x80 == 0 => (*tag, *first as usize, 2),
            [tag, first, rest @ ..] => {
                let count = (first & 0x7f) as usize;
                if count == 0 || count > 4 || rest.len() < count {
                    return Err("a length is malformed".to_owned());
                }
                let len = rest[..count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | *b as usize);
                (*tag, len, 2 + count)
            }
            _ => return Err("it ends early".to_owned()),
        };
        if self.rest.len() - header < len {
            return Err("an element is longer than its container".to_owned());
        }
        let content = &self.rest[header..header + len];
        self.rest = &self.rest[header + len..];
        Ok((tag, content))
    }

    /// The next element's whole encoding, if its tag is `tag`.
    fn element(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let start = self.rest;
        let (found, _) = self.any()?;
        if found != tag {
            return Err(format!("expected tag {tag:#04x}, found {found:#04x}"));
        }
        Ok(&start[..start.len() - self.rest.len()])
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let (found, content) = self.any()?;
        if found != tag {
            return Err(format!("expected tag {tag:#04x}, found {found:#04x}"));
        }
        Ok(content)
    }

    fn sequence(&mut self) -> Result<Reader<'a>, String> {
        self.expect(0x30).map(Reader::new)
    }

    fn explicit(&mut self, number: u8) -> Result<Reader<'a>, String> {
        self.expect(0xa0 | number).map(Reader::new)
    }

    fn octets(&mut self) -> Result<&'a [u8], String> {
        self.expect(0x04)
    }

    /// `[number] IMPLICIT OCTET STRING`, primitive or (as some writers make it) constructed.
    fn implicit_octets(&mut self, number: u8) -> Result<Vec<u8>, String> {
        let (tag, content) = self.any()?;
        if tag == 0x80 | number {
            return Ok(content.to_vec());
        }
        if tag != (0xa0 | number) {
            return Err("the encrypted content is missing".to_owned());
        }
        let mut parts = Reader::new(content);
        let mut out = Vec::new();
        while !parts.is_empty() {
            out.extend_from_slice(parts.octets()?);
        }
        Ok(out)
    }

    fn oid(&mut self) -> Result<&'a [u8], String> {
        self.expect(0x06)
    }

    fn integer(&mut self) -> Result<u64, String> {
        let content = self.expect(0x02)?;
        if content.is_empty() || content.len() > 8 || content[0] & 0x80 != 0 {
            return Err("an integer is out of range".to_owned());
        }
        Ok(content.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_derivation_matches_rfc_7292() {
        // Known vector: password "smeg" (BMP with terminator), salt 0A58CF64530D823F,
        // one iteration, purpose 1, 24 bytes (from the PKCS#12 test suites of several
        // implementations).
        let password = [0, b's', 0, b'm', 0, b'e', 0, b'g', 0, 0];
        let salt = [0x0a, 0x58, 0xcf, 0x64, 0x53, 0x0d, 0x82, 0x3f];
        let key = derive(Hash::Sha1, &password, &salt, 1, 1, 24);
        assert_eq!(
            hex::encode(key),
            "8aaae6297b6cb04642ab5b077851284eb7128f1a2a7fbca3"
        );
    }

    #[test]
    fn malformed_files_are_refused_without_panicking() {
        for input in [
            &b""[..],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x02, 0x01, 0x03],
            &[0x30, 0x05, 0x02, 0x01, 0x02, 0x30, 0x00],
        ] {
            assert!(decode(input).is_err());
        }
    }
}
