import SwitchyardModels

/// A semantic-cache entry as bytes, for the replication log shared by gateway instances: the magic `SYS1` (format
/// version 1), a 4-byte big-endian header length and a JSON header (id, namespace, question), a 4-byte vector length
/// and the vector's Float32 values (little-endian), then the answer (`CachedAnswerCoding`). Anything out of shape,
/// of another version, or expired decodes to nil.
public enum SemanticEntryCoding {
    static let magic: [UInt8] = Array("SYS1".utf8)
    /// Most dimensions accepted back (MiniLM has 384).
    static let maximumDimensions = 4096

    public static func encode(_ entry: SemanticEntry, now: ContinuousClock.Instant, wallNow: Int64) -> [UInt8] {
        let header = JSONValue.object(["id": .string(entry.id), "namespace": .string(entry.namespace), "text": .string(entry.text)])
            .serialized()
        var bytes = magic
        bytes.reserveCapacity(16 + header.count + entry.vector.count * 4)
        append(UInt32(header.count), to: &bytes)
        bytes += header
        append(UInt32(entry.vector.count), to: &bytes)
        for value in entry.vector {
            let bits = value.bitPattern
            bytes += [UInt8(bits & 0xFF), UInt8((bits >> 8) & 0xFF), UInt8((bits >> 16) & 0xFF), UInt8(bits >> 24)]
        }
        bytes += CachedAnswerCoding.encode(entry.answer, now: now, wallNow: wallNow)
        return bytes
    }

    public static func decode(_ bytes: [UInt8], now: ContinuousClock.Instant, wallNow: Int64) -> SemanticEntry? {
        guard bytes.count >= 12, Array(bytes[0..<4]) == magic else { return nil }
        var offset = 4
        guard let headerLength = read32(bytes, &offset), headerLength <= 1 << 20, offset + headerLength <= bytes.count,
              let header = try? JSONValue.parse(bytes[offset..<(offset + headerLength)]),
              let id = header["id"]?.stringValue, let namespace = header["namespace"]?.stringValue,
              let text = header["text"]?.stringValue
        else { return nil }
        offset += headerLength
        guard let dimensions = read32(bytes, &offset), dimensions > 0, dimensions <= maximumDimensions,
              offset + dimensions * 4 <= bytes.count
        else { return nil }
        var vector = [Float](repeating: 0, count: dimensions)
        for index in 0..<dimensions {
            let base = offset + index * 4
            let bits = UInt32(bytes[base]) | UInt32(bytes[base + 1]) << 8 | UInt32(bytes[base + 2]) << 16 | UInt32(bytes[base + 3]) << 24
            let value = Float(bitPattern: bits)
            guard value.isFinite else { return nil }
            vector[index] = value
        }
        offset += dimensions * 4
        guard let answer = CachedAnswerCoding.decode(Array(bytes[offset...]), now: now, wallNow: wallNow) else { return nil }
        return SemanticEntry(id: id, namespace: namespace, text: text, vector: vector, answer: answer)
    }

    static func append(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    static func read32(_ bytes: [UInt8], _ offset: inout Int) -> Int? {
        guard offset + 4 <= bytes.count else { return nil }
        let value = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
        offset += 4
        return value
    }
}
