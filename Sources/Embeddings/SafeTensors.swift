import Foundation
import SwitchyardModels

/// Reads float32 tensors from a `.safetensors` file (8-byte little-endian header length, JSON header, raw data).
struct SafeTensors {
    struct Entry {
        var shape: [Int]
        var range: Range<Int>
    }

    let data: Data
    let entries: [String: Entry]

    init(path: String) throws(EmbeddingError) {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
            throw .invalidModel("cannot read \(path)")
        }
        guard data.count >= 8 else { throw .invalidModel("safetensors file too short") }
        let headerLength = data.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
        guard headerLength > 0, 8 + headerLength <= data.count else { throw .invalidModel("bad safetensors header length") }
        let header: JSONValue
        do {
            header = try JSONValue.parse(data[8..<(8 + headerLength)])
        } catch {
            throw .invalidModel("bad safetensors header")
        }
        var entries: [String: Entry] = [:]
        for (name, value) in header.objectValue ?? [:] where name != "__metadata__" {
            guard value["dtype"]?.stringValue == "F32" else { continue }
            guard let shape = value["shape"]?.arrayValue?.compactMap({ $0.intValue.map(Int.init) }),
                  let offsets = value["data_offsets"]?.arrayValue?.compactMap({ $0.intValue.map(Int.init) }), offsets.count == 2
            else { throw .invalidModel("bad entry \(name)") }
            let start = 8 + headerLength + offsets[0]
            let end = 8 + headerLength + offsets[1]
            guard end <= data.count, end - start == shape.reduce(1, *) * 4 else { throw .invalidModel("bad extent for \(name)") }
            entries[name] = Entry(shape: shape, range: start..<end)
        }
        self.data = data
        self.entries = entries
    }

    /// The tensor's values, copied out (little-endian float32).
    func floats(_ name: String, shape expected: [Int]) throws(EmbeddingError) -> [Float] {
        guard let entry = entries[name] else { throw .invalidModel("missing tensor \(name)") }
        guard entry.shape == expected else { throw .invalidModel("\(name) has shape \(entry.shape), expected \(expected)") }
        let count = entry.shape.reduce(1, *)
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            data.withUnsafeBytes { raw in
                let source = UnsafeRawBufferPointer(rebasing: raw[entry.range])
                for index in 0..<count {
                    buffer[index] = Float(bitPattern: source.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self).littleEndian)
                }
            }
            initialized = count
        }
    }
}
