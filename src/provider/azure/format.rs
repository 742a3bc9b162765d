//! What the Azure plugin writes for each kind of object: a key's public half as a PKIX PEM
//! (from Key Vault's JSON Web Key), a certificate as PEM (from its DER), a certificate's
//! secret as its key and chain in PEM, and secrets decoded from base64 or hex on request.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::pkcs12;

/// `rsaEncryption`.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// `id-ecPublicKey`.
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1`.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1`.
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// `secp521r1`.
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

/// The PEM content types of a certificate's secret in Key Vault.
pub const CONTENT_TYPE_PEM: &str = "application/x-pem-file";
/// The PKCS#12 content type.
pub const CONTENT_TYPE_PFX: &str = "application/x-pkcs12";

/// A JSON Web Key as Key Vault returns it (public members only are read).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Jwk {
    /// Key type: `RSA`, `RSA-HSM`, `EC`, `EC-HSM`, `oct`, ...
    #[serde(default)]
    pub kty: String,
    /// RSA modulus (base64url).
    #[serde(default)]
    pub n: String,
    /// RSA exponent (base64url).
    #[serde(default)]
    pub e: String,
    /// EC curve.
    #[serde(default)]
    pub crv: String,
    /// EC x (base64url).
    #[serde(default)]
    pub x: String,
    /// EC y (base64url).
    #[serde(default)]
    pub y: String,
}

/// The public key of `jwk` as a `PUBLIC KEY` PEM block, as Go's `MarshalPKIXPublicKey` makes
/// it.
pub fn public_key_pem(jwk: &Jwk) -> Result<String, String> {
    let field = |name: &str, value: &str| {
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| format!("the key's {name} is not base64url"))
    };
    let spki = match jwk.kty.as_str() {
        "RSA" | "RSA-HSM" => {
            let n = field("n", &jwk.n)?;
            let e = field("e", &jwk.e)?;
            let key = der(0x30, &[integer(&n), integer(&e)].concat());
            let algorithm = der(0x30, &[der(0x06, OID_RSA), der(0x05, &[])].concat());
            der(0x30, &[algorithm, bit_string(&key)].concat())
        }
        "EC" | "EC-HSM" => {
            let (curve, size) = match jwk.crv.as_str() {
                "P-256" => (OID_P256, 32),
                "P-384" => (OID_P384, 48),
                "P-521" => (OID_P521, 66),
                other => return Err(format!("curve {other} is not supported")),
            };
            let x = field("x", &jwk.x)?;
            let y = field("y", &jwk.y)?;
            let mut point = vec![0x04];
            for coordinate in [x, y] {
                let digits = strip_zeros(&coordinate);
                if digits.len() > size {
                    return Err(format!("the key's point is too long for {}", jwk.crv));
                }
                point.extend(std::iter::repeat_n(0, size - digits.len()));
                point.extend_from_slice(digits);
            }
            let algorithm = der(0x30, &[der(0x06, OID_EC), der(0x06, curve)].concat());
            der(0x30, &[algorithm, bit_string(&point)].concat())
        }
        other => {
            return Err(format!(
                "failed to get key. key type '{other}' currently not supported"
            ));
        }
    };
    Ok(pem("PUBLIC KEY", &spki))
}

/// A certificate's DER as a `CERTIFICATE` PEM block.
pub fn certificate_pem(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

/// The file of a certificate's secret: PEM as is, PKCS#12 as is for `objectFormat: pfx`,
/// else its keys (PKCS#8) then its certificates, leaf first, in PEM.
pub fn certificate_secret(value: &str, content_type: &str, pfx: bool) -> Result<String, String> {
    match content_type {
        CONTENT_TYPE_PEM => Ok(value.to_owned()),
        CONTENT_TYPE_PFX if pfx => Ok(value.to_owned()),
        CONTENT_TYPE_PFX => {
            let raw = STANDARD
                .decode(value.trim())
                .map_err(|_| "the PKCS#12 secret is not base64".to_owned())?;
            let bundle = pkcs12::decode(&raw)?;
            let mut out = String::new();
            for key in &bundle.keys {
                out.push_str(&pem("PRIVATE KEY", key));
            }
            for cert in pkcs12::leaf_first(bundle.certificates) {
                out.push_str(&pem("CERTIFICATE", &cert));
            }
            Ok(out)
        }
        other => Err(format!(
            "failed to get certificate. unknown content type '{other}'"
        )),
    }
}

/// The certificate blocks and the key blocks of a PEM file, each in order (the plugin's
/// `--write-cert-and-key-in-separate-files`).
pub fn split_cert_and_key(text: &str) -> (String, String) {
    let (mut certs, mut keys) = (String::new(), String::new());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block[11..].find("-----").map(|i| i + 11);
        let Some(label_end) = label_end else { break };
        let label = &block[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = block.find(&end_marker) else {
            break;
        };
        let mut stop = end + end_marker.len();
        if block[stop..].starts_with('\n') {
            stop += 1;
        }
        let whole = &block[..stop];
        if label == "CERTIFICATE" {
            certs.push_str(whole);
        } else if label.ends_with("PRIVATE KEY") {
            keys.push_str(whole);
        }
        rest = &block[stop..];
    }
    (certs, keys)
}

/// One PEM block with 64-character lines, as Go's `pem.EncodeToMemory` writes it.
pub fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// A DER INTEGER of an unsigned big-endian number.
fn integer(bytes: &[u8]) -> Vec<u8> {
    let digits = strip_zeros(bytes);
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.is_empty() || digits[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(digits);
    der(0x02, &content)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    der(0x03, &content)
}

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let digits = strip_zeros(&bytes);
        out.push(0x80 | digits.len() as u8);
        out.extend_from_slice(digits);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_and_ec_keys_encode_as_pkix() {
        // A 9-bit modulus whose top bit needs a leading zero, and e = 65537.
        let rsa = Jwk {
            kty: "RSA".to_owned(),
            n: URL_SAFE_NO_PAD.encode([0x81, 0x01]),
            e: "AQAB".to_owned(),
            ..Jwk::default()
        };
        let pem_text = public_key_pem(&rsa).unwrap();
        let body: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(body).unwrap();
        assert_eq!(
            der,
            [
                0x30, 0x1e, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
                0x01, 0x05, 0x00, 0x03, 0x0d, 0x00, 0x30, 0x0a, 0x02, 0x03, 0x00, 0x81, 0x01, 0x02,
                0x03, 0x01, 0x00, 0x01
            ]
        );
        let ec = Jwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x: URL_SAFE_NO_PAD.encode([1u8; 31]),
            y: URL_SAFE_NO_PAD.encode([2u8; 32]),
            ..Jwk::default()
        };
        let body: String = public_key_pem(&ec)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(body).unwrap();
        assert_eq!(der.len(), 91, "a P-256 SPKI is 91 bytes");
        assert_eq!(&der[26..28], &[0x04, 0x00], "x is padded to 32 bytes");
        let oct = Jwk {
            kty: "oct".to_owned(),
            ..Jwk::default()
        };
        assert!(public_key_pem(&oct).unwrap_err().contains("not supported"));
    }

    #[test]
    fn pem_files_split_into_certs_and_keys() {
        let text = format!(
            "{}{}{}",
            pem("PRIVATE KEY", b"k"),
            pem("CERTIFICATE", b"c1"),
            pem("CERTIFICATE", b"c2")
        );
        let (certs, keys) = split_cert_and_key(&text);
        assert_eq!(keys, pem("PRIVATE KEY", b"k"));
        assert_eq!(
            certs,
            format!("{}{}", pem("CERTIFICATE", b"c1"), pem("CERTIFICATE", b"c2"))
        );
        assert!(certificate_secret("x", "text/plain", false).is_err());
    }
}
