/// Scheme, host and port of an upstream, and the path prefix of its base URL.
public struct UpstreamEndpoint: Hashable, Sendable {
    public let tls: Bool
    public let host: String
    public let port: Int
    public let basePath: String
    /// The `Host` header value, computed once (it is written into every request).
    public let hostHeader: String

    /// Parses `http[s]://host[:port][/prefix]`; nil for anything else.
    public init?(baseURL: String) {
        var rest = Substring(baseURL)
        if rest.hasPrefix("http://") {
            tls = false
            rest = rest.dropFirst(7)
        } else if rest.hasPrefix("https://") {
            tls = true
            rest = rest.dropFirst(8)
        } else {
            return nil
        }
        let authority = rest.prefix { $0 != "/" }
        var path = rest.dropFirst(authority.count)
        while path.hasSuffix("/") { path = path.dropLast() }
        basePath = String(path)
        if authority.hasPrefix("[") {  // [IPv6]:port
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            guard let port = after.isEmpty ? (tls ? 443 : 80) : Int(after.dropFirst()) else { return nil }
            self.port = port
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let port = Int(authority[authority.index(after: colon)...]) else { return nil }
            self.port = port
        } else {
            host = String(authority)
            port = tls ? 443 : 80
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        let name = host.contains(":") ? "[\(host)]" : host
        hostHeader = port == (tls ? 443 : 80) ? name : "\(name):\(port)"
    }
}
