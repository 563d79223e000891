/// A device that completes requests asynchronously (vioblk on io_uring):
/// before its host stops a queue or changes guest memory, it waits for
/// what is in flight and returns it on its queue.
public protocol InflightCompleting: AnyObject {
    func completeInflight()
}
