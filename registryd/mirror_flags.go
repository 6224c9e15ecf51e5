package main

import (
	"log/slog"

	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/mirror"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// newMirror is the pull-through cache of --mirror; nil without one.
func newMirror(log *slog.Logger, c config, b *blob.Bucket, tagStore tags.Store) (*mirror.Mirror, error) {
	if c.mirror == "" {
		return nil, nil
	}
	cfg, err := mirror.ParseConfig(c.mirror)
	if err != nil {
		return nil, err
	}
	m, err := mirror.New(cfg, b, tagStore, &mirror.Options{Logger: log, MaxManifestBytes: c.maxManifestBytes})
	if err != nil {
		return nil, err
	}
	hosts := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		hosts = append(hosts, u.Host)
	}
	log.Info("mirroring", "upstreams", hosts, "tag_ttl", cfg.TagTTL.Duration, "offline", *cfg.Offline)
	return m, nil
}
