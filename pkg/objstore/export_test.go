package objstore

// SetListPageSize makes an S3 store list n keys per request, so tests with a handful of keys
// exercise pagination.
func SetListPageSize(s Store, n int32) { s.(*s3Store).listPageSize = n }
