import Crypto

/// SHA-256 helpers for gateway API keys (stored only as hashes).
public enum KeyHash {
    /// The lowercase hex SHA-256 of `text`'s UTF-8 bytes.
    public static func sha256Hex(_ text: String) -> String {
        let digest = SHA256.hash(data: Array(text.utf8))
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var output: [UInt8] = []
        output.reserveCapacity(64)
        for byte in digest {
            output.append(hex[Int(byte >> 4)])
            output.append(hex[Int(byte & 0xF)])
        }
        return String(decoding: output, as: UTF8.self)
    }
}
