package ec2test

import (
	"cmp"
	"slices"
	"strconv"
	"time"
)

// Modification is a volume's ModifyVolume as the server holds it: modifying -> optimizing (the new size is
// in effect) -> completed, on the server's clock.
type Modification struct {
	State        string // modifying, optimizing, completed, failed
	StatusMsg    string
	OriginalSize int32
	TargetSize   int32
	OriginalType string
	TargetType   string
	Started      time.Time
	Ended        time.Time

	optimizingAt time.Time
	completedAt  time.Time
}

type xmlModification struct {
	VolumeID           string `xml:"volumeId"`
	ModificationState  string `xml:"modificationState"`
	StatusMessage      string `xml:"statusMessage,omitempty"`
	TargetSize         int32  `xml:"targetSize"`
	TargetIops         int32  `xml:"targetIops,omitempty"`
	TargetVolumeType   string `xml:"targetVolumeType"`
	TargetThroughput   int32  `xml:"targetThroughput,omitempty"`
	TargetMultiAttach  bool   `xml:"targetMultiAttachEnabled"`
	OriginalSize       int32  `xml:"originalSize"`
	OriginalIops       int32  `xml:"originalIops,omitempty"`
	OriginalVolumeType string `xml:"originalVolumeType"`
	OriginalThroughput int32  `xml:"originalThroughput,omitempty"`
	OriginalMulti      bool   `xml:"originalMultiAttachEnabled"`
	Progress           int64  `xml:"progress"`
	StartTime          string `xml:"startTime"`
	EndTime            string `xml:"endTime,omitempty"`
}

func (s *Server) modXML(v *Volume) xmlModification {
	m := v.Modification
	x := xmlModification{VolumeID: v.ID, ModificationState: m.State, StatusMessage: m.StatusMsg,
		TargetSize: m.TargetSize, TargetVolumeType: m.TargetType, OriginalSize: m.OriginalSize,
		OriginalVolumeType: m.OriginalType, StartTime: m.Started.UTC().Format(timeFormat),
		TargetIops: v.IOPS, OriginalIops: v.IOPS, TargetThroughput: v.Throughput, OriginalThroughput: v.Throughput}
	switch m.State {
	case "completed":
		x.Progress = 100
	case "optimizing":
		x.Progress = 50
		if total := m.completedAt.Sub(m.optimizingAt); total > 0 {
			x.Progress += int64(50 * s.now().Sub(m.optimizingAt) / total)
		}
		x.Progress = min(x.Progress, 99)
	}
	if !m.Ended.IsZero() {
		x.EndTime = m.Ended.UTC().Format(timeFormat)
	}
	return x
}

// settleModification moves a volume's modification along; s.mu is held. The OnModify hook runs once the lock is
// released, when the new size takes effect.
func (s *Server) settleModification(v *Volume, now time.Time) (hooks []func()) {
	m := v.Modification
	if m == nil {
		return nil
	}
	if m.State == "modifying" && !now.Before(m.optimizingAt) {
		m.State = "optimizing"
		m.completedAt = now.Add(s.delays.Optimize)
		if m.TargetSize != v.Size {
			v.Size = m.TargetSize
			if hook := s.OnModify; hook != nil {
				id, size := v.ID, v.Size
				hooks = append(hooks, func() { hook(id, size) })
			}
		}
		v.Type = m.TargetType
	}
	if m.State == "optimizing" && !now.Before(m.completedAt) {
		m.State, m.Ended = "completed", now
	}
	return hooks
}

// FailModification makes the volume's modification in progress fail with msg (a transient AWS failure).
func (s *Server) FailModification(volumeID, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := s.volumes[volumeID]; v != nil && v.Modification != nil {
		v.Modification.State, v.Modification.StatusMsg, v.Modification.Ended = "failed", msg, s.now()
	}
}

// maxSize is the largest size, in GiB, of each volume type.
var maxSize = map[string]int64{"gp2": 16384, "gp3": 16384, "io1": 16384, "io2": 65536, "st1": 16384, "sc1": 16384, "standard": 1024}

func (s *Server) modifyVolume(region string, f form) (any, *apiError) {
	id := f.get("VolumeId")
	if id == "" {
		return nil, errf("MissingParameter", "The request must contain the parameter VolumeId")
	}
	v := s.volumes[id]
	if v == nil || v.Region != region {
		return nil, errf("InvalidVolume.NotFound", "The volume '%s' does not exist.", id)
	}
	if v.State != "in-use" && v.State != "available" {
		return nil, errf("IncorrectState", "Volume '%s' is in the '%s' state.", id, v.State)
	}
	if m := v.Modification; m != nil && (m.State == "modifying" || m.State == "optimizing") {
		return nil, errf("IncorrectModificationState",
			"Cannot modify volume '%s' while a previous modification is %s.", id, m.State)
	}
	size, typ := int64(v.Size), v.Type
	if str := f.get("Size"); str != "" {
		n, err := strconv.ParseInt(str, 10, 32)
		if err != nil || n < 1 {
			return nil, errf("InvalidParameterValue", "Value (%s) for parameter size is invalid.", str)
		}
		if n < int64(v.Size) {
			return nil, errf("InvalidParameterValue", "New size cannot be smaller than existing size")
		}
		size = n
	}
	if t := f.get("VolumeType"); t != "" {
		if _, ok := maxSize[t]; !ok {
			return nil, errf("InvalidParameterValue", "Value (%s) for parameter volumeType is invalid.", t)
		}
		typ = t
	}
	if size > maxSize[typ] {
		return nil, errf("InvalidParameterValue", "Volume of %dGiB is too large for volume type %s; maximum is %dGiB.",
			size, typ, maxSize[typ])
	}
	if size == int64(v.Size) && typ == v.Type {
		return nil, errf("InvalidParameterCombination",
			"New configuration for volume '%s' must differ from the existing one.", id)
	}
	now := s.now()
	v.Modification = &Modification{State: "modifying", OriginalSize: v.Size, TargetSize: int32(size),
		OriginalType: v.Type, TargetType: typ, Started: now, optimizingAt: now.Add(s.delays.Modify)}
	return struct {
		Modification xmlModification `xml:"volumeModification"`
	}{s.modXML(v)}, nil
}

func (s *Server) describeVolumesModifications(region string, f form) (any, *apiError) {
	ids := f.list("VolumeId")
	filters := f.filters()
	for name := range filters {
		switch name {
		case "volume-id", "modification-state", "target-size", "original-size", "target-volume-type":
		default:
			return nil, errf("InvalidParameterValue", "The filter '%s' is invalid", name)
		}
	}
	for _, id := range ids {
		v := s.volumes[id]
		if v == nil || v.Region != region {
			return nil, errf("InvalidVolume.NotFound", "The volume '%s' does not exist.", id)
		}
		if v.Modification == nil {
			return nil, errf("InvalidVolumeModification.NotFound", "Modification for volume '%s' does not exist.", id)
		}
	}
	pg, aerr := f.page(false, "", 500)
	if aerr != nil {
		return nil, aerr
	}
	var vols []*Volume
	for _, v := range s.volumes {
		if v.Region != region || v.Modification == nil || (len(ids) > 0 && !contains(ids, v.ID)) {
			continue
		}
		ok := true
		for name, vals := range filters {
			var have string
			switch name {
			case "volume-id":
				have = v.ID
			case "modification-state":
				have = v.Modification.State
			case "target-size":
				have = strconv.Itoa(int(v.Modification.TargetSize))
			case "original-size":
				have = strconv.Itoa(int(v.Modification.OriginalSize))
			case "target-volume-type":
				have = v.Modification.TargetType
			}
			if !contains(vals, have) {
				ok = false
			}
		}
		if ok {
			vols = append(vols, v)
		}
	}
	slices.SortFunc(vols, func(a, b *Volume) int {
		return cmp.Or(a.Modification.Started.Compare(b.Modification.Started), cmp.Compare(a.ID, b.ID))
	})
	vols, next, aerr := paginate(vols, pg)
	if aerr != nil {
		return nil, aerr
	}
	out := struct {
		Modifications []xmlModification `xml:"volumeModificationSet>item"`
		NextToken     string            `xml:"nextToken,omitempty"`
	}{NextToken: next}
	for _, v := range vols {
		out.Modifications = append(out.Modifications, s.modXML(v))
	}
	return out, nil
}

func (s *Server) detachVolume(region string, f form) (any, *apiError) {
	id := f.get("VolumeId")
	if id == "" {
		return nil, errf("MissingParameter", "The request must contain the parameter volumeId")
	}
	v := s.volumes[id]
	if v == nil || v.Region != region {
		return nil, errf("InvalidVolume.NotFound", "The volume '%s' does not exist.", id)
	}
	a := v.Attachment
	if a == nil {
		return nil, errf("IncorrectState", "Volume '%s' is in the '%s' state.", id, v.State)
	}
	if inst := f.get("InstanceId"); inst != "" && inst != a.InstanceID {
		return nil, errf("InvalidAttachment.NotFound", "Volume '%s' is not attached to instance '%s'.", id, inst)
	}
	if dev := f.get("Device"); dev != "" && dev != a.Device {
		return nil, errf("InvalidAttachment.NotFound", "Volume '%s' is not attached at '%s'.", id, dev)
	}
	if a.State != "detaching" {
		a.State = "detaching"
		a.detachedAt = s.now().Add(s.delays.Detach)
	}
	return xmlAttachment{VolumeID: id, InstanceID: a.InstanceID, Device: a.Device, Status: a.State,
		AttachTime: a.Time.UTC().Format(timeFormat)}, nil
}

func (s *Server) createTags(region string, f form) (any, *apiError) {
	ids := f.list("ResourceId")
	if len(ids) == 0 {
		return nil, errf("MissingParameter", "The request must contain the parameter resourceIdSet")
	}
	var tags []Tag
	for i := 1; ; i++ {
		p := "Tag." + strconv.Itoa(i)
		k, ok := f[p+".Key"]
		if !ok {
			break
		}
		if len(k[0]) >= 4 && k[0][:4] == "aws:" {
			return nil, errf("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")
		}
		tags = append(tags, Tag{Key: k[0], Value: f.get(p + ".Value")})
	}
	if len(tags) == 0 {
		return nil, errf("MissingParameter", "The request must contain the parameter tagSet")
	}
	// All or nothing: every resource must exist before any is tagged.
	set := make([]*[]Tag, 0, len(ids))
	for _, id := range ids {
		if v := s.volumes[id]; v != nil && v.Region == region {
			set = append(set, &v.Tags)
		} else if sn := s.snapshots[id]; sn != nil && sn.Region == region {
			set = append(set, &sn.Tags)
		} else {
			code := "InvalidID"
			switch {
			case len(id) > 4 && id[:4] == "vol-":
				code = "InvalidVolume.NotFound"
			case len(id) > 5 && id[:5] == "snap-":
				code = "InvalidSnapshot.NotFound"
			}
			return nil, errf(code, "The ID '%s' does not exist", id)
		}
	}
	for _, ts := range set {
		for _, t := range tags {
			if i := slices.IndexFunc(*ts, func(o Tag) bool { return o.Key == t.Key }); i >= 0 {
				(*ts)[i].Value = t.Value
			} else {
				*ts = append(*ts, t)
			}
		}
	}
	return struct {
		Return bool `xml:"return"`
	}{true}, nil
}
