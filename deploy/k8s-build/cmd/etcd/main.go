// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain),
// built at the version pinned in ../../go.mod, the one kube-apiserver 1.37 uses.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
