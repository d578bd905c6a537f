import Crypto

/// SHA-256 helpers for gateway API keys (stored only as hashes).
public enum KeyHash {
    /// The lowercase hex SHA-256 of `text`'s UTF-8 bytes.
    public static func sha256Hex(_ text: String) -> String {
        sha256Hex(text, characters: 64)
    }

    /// The lowercase hex SHA-256 of `bytes`.
    public static func sha256Hex(bytes: [UInt8]) -> String {
        hex(SHA256.hash(data: bytes))
    }

    /// The first `characters` (up to 64) hex digits of the SHA-256 of `text`'s UTF-8 bytes, hashed in place and
    /// only those digits written (a key name on the request path).
    public static func sha256Hex(_ text: String, characters: Int) -> String {
        var hasher = SHA256()
        var text = text
        text.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        let digest = hasher.finalize()
        let count = min(max(characters, 0), 64)
        return digest.withUnsafeBytes { bytes in
            String(unsafeUninitializedCapacity: count) { out in
                for index in 0..<count {
                    let byte = bytes[index / 2]
                    out[index] = digit(index % 2 == 0 ? byte >> 4 : byte & 0xF)
                }
                return count
            }
        }
    }

    /// Lowercase hex digits of `bytes`.
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(bytes.underestimatedCount * 2)
        for byte in bytes {
            output.append(digit(byte >> 4))
            output.append(digit(byte & 0xF))
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static func digit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }
}
