import Foundation
import SwitchyardModels

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file mapped read-only into memory. Its pages are read from the page cache when first touched, and count in the
/// process's RSS only while touched (file-backed, not anonymous memory): a table of which a request reads a few rows
/// costs those rows' pages, not the table.
///
/// `@unchecked Sendable`: the mapping is read-only and lives until `deinit`.
final class MappedFile: @unchecked Sendable {
    let base: UnsafeRawPointer
    let count: Int

    init?(path: String) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_size > 0 else { return nil }
        let count = Int(status.st_size)
        guard let address = mmap(nil, count, PROT_READ, MAP_PRIVATE, descriptor, 0), address != MAP_FAILED else {
            return nil
        }
        self.base = UnsafeRawPointer(address)
        self.count = count
    }

    /// Drops the pages touched so far from this process's memory (they stay in the page cache, and are read again
    /// from there if touched again). Used after the weights that are copied and packed have been read.
    func releaseTouchedPages() {
        _ = madvise(UnsafeMutableRawPointer(mutating: base), count, MADV_DONTNEED)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), count)
    }
}

/// A float32 tensor left in the mapped file and read in place: rows of `width` values.
struct MappedMatrix: Sendable {
    let file: MappedFile
    let offset: Int
    let rows: Int
    let width: Int

    /// Adds row `row` to `target[0..<width]` (`target[d] += self[row][d]`).
    func addRow(_ row: Int, into target: UnsafeMutablePointer<Float>) {
        let source = file.base + offset + row * width * 4
        for d in 0..<width {
            target[d] += Float(bitPattern: source.loadUnaligned(fromByteOffset: d * 4, as: UInt32.self).littleEndian)
        }
    }
}

/// Reads float32 tensors from a `.safetensors` file (8-byte little-endian header length, JSON header, raw data).
struct SafeTensors {
    struct Entry {
        var shape: [Int]
        var range: Range<Int>
    }

    let file: MappedFile
    let entries: [String: Entry]

    init(path: String) throws(EmbeddingError) {
        guard let file = MappedFile(path: path) else { throw .invalidModel("cannot read \(path)") }
        let data = UnsafeRawBufferPointer(start: file.base, count: file.count)
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
            guard offsets[0] >= 0, start <= end, end <= data.count, end - start == shape.reduce(1, *) * 4 else {
                throw .invalidModel("bad extent for \(name)")
            }
            entries[name] = Entry(shape: shape, range: start..<end)
        }
        self.file = file
        self.entries = entries
    }

    func entry(_ name: String, shape expected: [Int]) throws(EmbeddingError) -> Entry {
        guard let entry = entries[name] else { throw .invalidModel("missing tensor \(name)") }
        guard entry.shape == expected else { throw .invalidModel("\(name) has shape \(entry.shape), expected \(expected)") }
        return entry
    }

    /// The tensor's values, copied out (little-endian float32).
    func floats(_ name: String, shape expected: [Int]) throws(EmbeddingError) -> [Float] {
        let entry = try entry(name, shape: expected)
        let count = entry.shape.reduce(1, *)
        let source = file.base + entry.range.lowerBound
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            for index in 0..<count {
                buffer[index] = Float(bitPattern: source.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self).littleEndian)
            }
            initialized = count
        }
    }

    /// A matrix read in place from the mapping, not copied.
    func mapped(_ name: String, rows: Int, width: Int) throws(EmbeddingError) -> MappedMatrix {
        let entry = try entry(name, shape: [rows, width])
        return MappedMatrix(file: file, offset: entry.range.lowerBound, rows: rows, width: width)
    }
}
