/// A request that is not valid for its API: the key path and what is wrong there.
public struct InvalidRequest: Error, Sendable, Hashable, CustomStringConvertible {
    /// Dotted key path into the body, such as `messages[2].role`; empty for the body itself.
    public var path: String
    public var reason: String

    public init(path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { path.isEmpty ? reason : "\(path): \(reason)" }
}

/// Reads typed members out of a JSON object, throwing `InvalidRequest` errors that name the key path.
struct FieldReader {
    let path: String
    let members: [String: JSONValue]

    init(_ value: JSONValue, path: String) throws(InvalidRequest) {
        guard case .object(let members) = value else {
            throw InvalidRequest(path: path, "expected an object, got \(value.typeName)")
        }
        self.path = path
        self.members = members
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func has(_ key: String) -> Bool {
        if let value = members[key], !value.isNull { return true }
        return false
    }

    func value(_ key: String) -> JSONValue? {
        guard let value = members[key], !value.isNull else { return nil }
        return value
    }

    func string(_ key: String) throws(InvalidRequest) -> String {
        guard let value = try optionalString(key) else { throw InvalidRequest(path: child(key), "is required") }
        return value
    }

    func optionalString(_ key: String) throws(InvalidRequest) -> String? {
        guard let value = value(key) else { return nil }
        guard case .string(let string) = value else {
            throw InvalidRequest(path: child(key), "expected a string, got \(value.typeName)")
        }
        return string
    }

    func optionalBool(_ key: String) throws(InvalidRequest) -> Bool? {
        guard let value = value(key) else { return nil }
        guard case .bool(let bool) = value else {
            throw InvalidRequest(path: child(key), "expected a boolean, got \(value.typeName)")
        }
        return bool
    }

    func optionalInt(_ key: String, in range: ClosedRange<Int64>? = nil) throws(InvalidRequest) -> Int64? {
        guard let value = value(key) else { return nil }
        guard let int = value.intValue else {
            throw InvalidRequest(path: child(key), "expected an integer, got \(value.typeName)")
        }
        if let range, !range.contains(int) {
            throw InvalidRequest(path: child(key), "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return int
    }

    /// A token count reported by an upstream, clamped to `0...Usage.maximumTokens`; sets `clamped` when it had to be.
    func tokenCount(_ key: String, clamped: inout Bool) throws(InvalidRequest) -> Int? {
        guard let raw = try optionalInt(key) else { return nil }
        let bounded = Swift.min(Swift.max(raw, 0), Int64(Usage.maximumTokens))
        if bounded != raw { clamped = true }
        return Int(bounded)
    }

    /// An index into a short list (choices, tool calls) sent by an upstream; anything past `limit` is malformed.
    func index(_ key: String, limit: Int = 1024) throws(InvalidRequest) -> Int? {
        try optionalInt(key, in: 0...Int64(limit)).map { Int($0) }
    }

    func optionalDouble(_ key: String, in range: ClosedRange<Double>? = nil) throws(InvalidRequest) -> Double? {
        guard let value = value(key) else { return nil }
        guard let double = value.doubleValue else {
            throw InvalidRequest(path: child(key), "expected a number, got \(value.typeName)")
        }
        if let range, !range.contains(double) {
            throw InvalidRequest(path: child(key), "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return double
    }

    func array(_ key: String) throws(InvalidRequest) -> [JSONValue] {
        guard let value = try optionalArray(key) else { throw InvalidRequest(path: child(key), "is required") }
        return value
    }

    func optionalArray(_ key: String) throws(InvalidRequest) -> [JSONValue]? {
        guard let value = value(key) else { return nil }
        guard case .array(let array) = value else {
            throw InvalidRequest(path: child(key), "expected an array, got \(value.typeName)")
        }
        return array
    }

    func object(_ key: String) throws(InvalidRequest) -> FieldReader? {
        guard let value = value(key) else { return nil }
        return try FieldReader(value, path: child(key))
    }

    /// `stop`-style members: a string or an array of strings.
    func stringOrStrings(_ key: String) throws(InvalidRequest) -> [String] {
        guard let value = value(key) else { return [] }
        switch value {
        case .string(let string): return [string]
        case .array(let elements):
            var strings: [String] = []
            for (offset, element) in elements.enumerated() {
                guard case .string(let string) = element else {
                    throw InvalidRequest(path: "\(child(key))[\(offset)]", "expected a string, got \(element.typeName)")
                }
                strings.append(string)
            }
            return strings
        default:
            throw InvalidRequest(path: child(key), "expected a string or an array of strings, got \(value.typeName)")
        }
    }

    /// The members not in `known`. Most requests have none: then no dictionary is built.
    func extras(excluding known: Set<String>) -> [String: JSONValue] {
        guard members.keys.contains(where: { !known.contains($0) }) else { return [:] }
        return members.filter { !known.contains($0.key) }
    }
}

extension Int64 {
    var asInt: Int { Int(clamping: self) }
}
