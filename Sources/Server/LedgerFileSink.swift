import Limits
import SwitchyardCore
import SwitchyardModels
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The ledger's default sink: one JSON object per line, in files named
/// `ledger-<UTC yyyymmddThhmmss>-<instance>.jsonl` (several instances may share the directory). A file ends when it
/// passes `rotateBytes` or the UTC day changes; at each new file, this instance's and others' files older than the
/// retention are deleted.
public final class LedgerFileSink: LedgerSink {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    private struct OpenFile {
        var descriptor: Int32
        var bytes: Int
        var day: Int64
    }

    let directory: String
    let rotateBytes: Int
    let retentionSeconds: Int64
    let instance: String
    /// Unix seconds now.
    let clock: @Sendable () -> Int64
    private let file = Mutex<OpenFile?>(nil)

    public init(directory: String, rotateBytes: Int = 64 << 20, retention: Duration = .seconds(31 * 86400),
                instance: String = LedgerFileSink.randomInstance(), now: @escaping @Sendable () -> Int64 = unixSeconds) {
        self.directory = directory
        self.rotateBytes = max(rotateBytes, 1)
        retentionSeconds = max(retention.components.seconds, 1)
        self.instance = instance
        clock = now
    }

    public static func randomInstance() -> String {
        String(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF, radix: 16)
    }

    deinit {
        if let open = file.withLock({ $0 }) { close(open.descriptor) }
    }

    public func write(_ records: [LedgerRecord]) async throws {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(records.count * 512)
        for record in records {
            record.write(into: &bytes)
            bytes.append(UInt8(ascii: "\n"))
        }
        try append(bytes)
    }

    /// The files this sink wrote so far and others in the directory, oldest first (by name: their start time).
    public func files() -> [String] {
        Self.list(directory).sorted()
    }

    private func append(_ bytes: [UInt8]) throws {
        let now = clock()
        let day = now / 86400
        try file.withLock { open throws in
            if let current = open, current.bytes > 0, current.bytes + bytes.count > rotateBytes || current.day != day {
                close(current.descriptor)
                open = nil
            }
            if open == nil {
                open = try start(now: now, day: day)
            }
            guard var current = open else { return }
            try Self.writeAll(current.descriptor, bytes)
            current.bytes += bytes.count
            open = current
        }
    }

    /// A new file (and the old ones past the retention gone).
    private func start(now: Int64, day: Int64) throws -> OpenFile {
        if mkdir(directory, 0o750) != 0 && errno != EEXIST {
            throw Failure(description: "cannot create the ledger directory '\(directory)' (errno \(errno))")
        }
        prune(now: now)
        let (year, month, date) = CalendarPeriod.civil(fromDays: day)
        let seconds = now % 86400
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let name = "ledger-\(year)\(two(month))\(two(date))T\(two(seconds / 3600))\(two(seconds / 60 % 60))\(two(seconds % 60))-\(instance)"
        var path = "\(directory)/\(name).jsonl"
        // Two files started within one second (a tiny `rotateBytes`): numbered.
        var number = 1
        while access(path, F_OK) == 0 {
            number += 1
            path = "\(directory)/\(name).\(number).jsonl"
        }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else { throw Failure(description: "cannot open '\(path)' (errno \(errno))") }
        return OpenFile(descriptor: descriptor, bytes: 0, day: day)
    }

    /// Deletes ledger files whose last write is older than the retention.
    private func prune(now: Int64) {
        for name in Self.list(directory) {
            let path = "\(directory)/\(name)"
            var info = stat()
            guard stat(path, &info) == 0 else { continue }
            if Int64(info.st_mtim.tv_sec) < now - retentionSeconds { unlink(path) }
        }
    }

    /// The ledger files in `directory` (any instance's), unordered.
    public static func list(_ directory: String) -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name.hasPrefix("ledger-"), name.hasSuffix(".jsonl") { names.append(name) }
        }
        return names
    }

    static func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer in
                guard let base = buffer.baseAddress else { return 0 }
                return posixWrite(descriptor, base + offset, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "ledger write failed (errno \(errno))")
            }
            offset += written
        }
    }
}

/// `write(2)`, out of reach of the sink's own `write`.
private func posixWrite(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, bytes, count)
}
