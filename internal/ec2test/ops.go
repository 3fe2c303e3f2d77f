package ec2test

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The XML shapes below follow the EC2 2016-11-15 responses (lists are <xSet><item>...</item></xSet>).

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlAttachment struct {
	VolumeID            string `xml:"volumeId"`
	InstanceID          string `xml:"instanceId"`
	Device              string `xml:"device"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xmlVolume struct {
	VolumeID         string          `xml:"volumeId"`
	Size             int32           `xml:"size"`
	SnapshotID       string          `xml:"snapshotId"`
	AvailabilityZone string          `xml:"availabilityZone"`
	Status           string          `xml:"status"`
	CreateTime       string          `xml:"createTime"`
	Attachments      []xmlAttachment `xml:"attachmentSet>item"`
	Tags             []xmlTag        `xml:"tagSet>item,omitempty"`
	VolumeType       string          `xml:"volumeType"`
	IOPS             int32           `xml:"iops,omitempty"`
	Throughput       int32           `xml:"throughput,omitempty"`
	Encrypted        bool            `xml:"encrypted"`
	KMSKeyID         string          `xml:"kmsKeyId,omitempty"`
	MultiAttach      bool            `xml:"multiAttachEnabled"`
}

type xmlSnapshot struct {
	SnapshotID  string   `xml:"snapshotId"`
	VolumeID    string   `xml:"volumeId"`
	Status      string   `xml:"status"`
	StartTime   string   `xml:"startTime"`
	Progress    string   `xml:"progress"`
	OwnerID     string   `xml:"ownerId"`
	VolumeSize  int32    `xml:"volumeSize"`
	Description string   `xml:"description"`
	Encrypted   bool     `xml:"encrypted"`
	Tags        []xmlTag `xml:"tagSet>item,omitempty"`
}

const timeFormat = "2006-01-02T15:04:05.000Z"

func xmlTags(tags []Tag) []xmlTag {
	var out []xmlTag
	for _, t := range tags {
		out = append(out, xmlTag{t.Key, t.Value})
	}
	return out
}

func (v *Volume) xml() xmlVolume {
	x := xmlVolume{
		VolumeID: v.ID, Size: v.Size, SnapshotID: v.SnapshotID, AvailabilityZone: v.AZ, Status: v.State,
		CreateTime: v.Created.UTC().Format(timeFormat), Tags: xmlTags(v.Tags), VolumeType: v.Type,
		IOPS: v.IOPS, Throughput: v.Throughput, Encrypted: v.Encrypted, KMSKeyID: v.KMSKeyID,
	}
	if a := v.Attachment; a != nil {
		x.Attachments = []xmlAttachment{{VolumeID: v.ID, InstanceID: a.InstanceID, Device: a.Device, Status: a.State,
			AttachTime: a.Time.UTC().Format(timeFormat)}}
	}
	return x
}

func (s *Server) snapXML(sn *Snapshot) xmlSnapshot {
	progress := "100%"
	if sn.State == "pending" {
		pct := 0
		if s.delays.Snapshot > 0 {
			pct = int(100 * s.now().Sub(sn.Started) / s.delays.Snapshot)
		}
		if pct > 99 {
			pct = 99
		}
		progress = strconv.Itoa(pct) + "%"
	}
	return xmlSnapshot{SnapshotID: sn.ID, VolumeID: sn.VolumeID, Status: sn.State,
		StartTime: sn.Started.UTC().Format(timeFormat), Progress: progress, OwnerID: sn.Owner,
		VolumeSize: sn.VolumeSize, Description: sn.Description, Encrypted: sn.Encrypted, Tags: xmlTags(sn.Tags)}
}

func (s *Server) describeVolumes(region string, f form) (any, *apiError) {
	ids := f.list("VolumeId")
	filters := f.filters()
	for name := range filters {
		switch name {
		case "availability-zone", "status", "attachment.instance-id", "attachment.status", "volume-id",
			"snapshot-id", "tag-key", "volume-type":
		default:
			if len(name) < 5 || name[:4] != "tag:" {
				return nil, errf("InvalidParameterValue", "The filter '%s' is invalid", name)
			}
		}
	}
	for _, id := range ids {
		if v := s.volumes[id]; v == nil || v.Region != region {
			return nil, errf("InvalidVolume.NotFound", "The volume '%s' does not exist.", id)
		}
	}
	pg, aerr := f.page(len(ids) > 0, "volume IDs", 500)
	if aerr != nil {
		return nil, aerr
	}
	var vols []*Volume
	for _, v := range s.volumes {
		if v.Region != region || (len(ids) > 0 && !contains(ids, v.ID)) || !matchTags(v.Tags, filters) {
			continue
		}
		ok := true
		for name, vals := range filters {
			var have string
			switch name {
			case "availability-zone":
				have = v.AZ
			case "status":
				have = v.State
			case "volume-id":
				have = v.ID
			case "snapshot-id":
				have = v.SnapshotID
			case "volume-type":
				have = v.Type
			case "attachment.instance-id":
				if v.Attachment != nil {
					have = v.Attachment.InstanceID
				}
			case "attachment.status":
				if v.Attachment != nil {
					have = v.Attachment.State
				}
			default:
				continue
			}
			if !contains(vals, have) {
				ok = false
			}
		}
		if ok {
			vols = append(vols, v)
		}
	}
	slices.SortFunc(vols, func(a, b *Volume) int { return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID)) })
	vols, next, aerr := paginate(vols, pg)
	if aerr != nil {
		return nil, aerr
	}
	out := struct {
		Volumes   []xmlVolume `xml:"volumeSet>item"`
		NextToken string      `xml:"nextToken,omitempty"`
	}{NextToken: next}
	for _, v := range vols {
		out.Volumes = append(out.Volumes, v.xml())
	}
	return out, nil
}

func (s *Server) createVolume(region string, f form) (any, *apiError) {
	az := f.get("AvailabilityZone")
	if az == "" {
		return nil, errf("MissingParameter", "The request must contain the parameter AvailabilityZone")
	}
	if regionOf(az) != region {
		return nil, errf("InvalidZone.NotFound", "The zone '%s' does not exist.", az)
	}
	sizeStr, snapID := f.get("Size"), f.get("SnapshotId")
	if sizeStr == "" && snapID == "" {
		return nil, errf("MissingParameter", "The request must contain the parameter size or snapshotId")
	}
	var size int64
	if sizeStr != "" {
		var err error
		if size, err = strconv.ParseInt(sizeStr, 10, 32); err != nil || size < 1 || size > 65536 {
			return nil, errf("InvalidParameterValue", "Volume size %q is not valid", sizeStr)
		}
	}
	if snapID != "" {
		sn := s.snapshots[snapID]
		if sn == nil || sn.Region != region {
			return nil, errf("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.", snapID)
		}
		if sn.State != "completed" {
			return nil, errf("IncorrectState", "Snapshot is in invalid state - %s", sn.State)
		}
		if size == 0 {
			size = int64(sn.VolumeSize)
		}
		if size < int64(sn.VolumeSize) {
			return nil, errf("InvalidParameterValue", "Volume of size %dGB is smaller than snapshot '%s', expect size >= %dGB",
				size, snapID, sn.VolumeSize)
		}
	}
	encrypted := f.get("Encrypted") == "true"
	if f.get("KmsKeyId") != "" && !encrypted {
		return nil, errf("InvalidParameterDependency", "The parameter KmsKeyId requires the parameter Encrypted to be set.")
	}
	typ := f.get("VolumeType")
	if typ == "" {
		typ = "gp2"
	}
	switch typ {
	case "gp2", "gp3", "io1", "io2", "st1", "sc1", "standard":
	default:
		return nil, errf("InvalidParameterValue", "Value (%s) for parameter volumeType is invalid.", typ)
	}
	iops, _ := strconv.Atoi(f.get("Iops"))
	tput, _ := strconv.Atoi(f.get("Throughput"))
	if iops > 0 && typ != "gp3" && typ != "io1" && typ != "io2" {
		return nil, errf("InvalidParameterCombination", "The parameter iops is not supported for %s volumes.", typ)
	}
	if tput > 0 && typ != "gp3" {
		return nil, errf("InvalidParameterCombination", "The parameter throughput is not supported for %s volumes.", typ)
	}
	tags, aerr := f.tags("volume")
	if aerr != nil {
		return nil, aerr
	}
	token := f.get("ClientToken")
	if token != "" {
		if id, ok := s.tokens[region+"/"+token]; ok {
			v := s.volumes[id]
			if v.AZ != az || int64(v.Size) != size || v.SnapshotID != snapID || v.Type != typ {
				return nil, errf("IdempotentParameterMismatch",
					"The client token you have provided is associated with a resource that is already created with different parameters.")
			}
			return v.xml(), nil
		}
	}
	now := s.now()
	v := &Volume{ID: newID("vol"), Region: region, AZ: az, Size: int32(size), SnapshotID: snapID, State: "creating",
		Type: typ, IOPS: int32(iops), Throughput: int32(tput), Encrypted: encrypted, KMSKeyID: f.get("KmsKeyId"),
		Created: now, Tags: tags, ClientToken: token, availableAt: now.Add(s.delays.Create)}
	s.volumes[v.ID] = v
	if token != "" {
		s.tokens[region+"/"+token] = v.ID
	}
	return v.xml(), nil
}

var deviceName = regexp.MustCompile(`^/dev/(sd|xvd)[a-z]{1,2}$`)

func (s *Server) attachVolume(region string, f form) (any, *apiError) {
	volID, inst, dev := f.get("VolumeId"), f.get("InstanceId"), f.get("Device")
	switch {
	case volID == "":
		return nil, errf("MissingParameter", "The request must contain the parameter volume")
	case inst == "":
		return nil, errf("MissingParameter", "The request must contain the parameter instanceId")
	case dev == "":
		return nil, errf("MissingParameter", "The request must contain the parameter device")
	}
	v := s.volumes[volID]
	if v == nil || v.Region != region {
		return nil, errf("InvalidVolume.NotFound", "The volume '%s' does not exist.", volID)
	}
	in, ok := s.instances[inst]
	if !ok || regionOf(in.AZ) != region {
		return nil, errf("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", inst)
	}
	az := in.AZ
	if !deviceName.MatchString(dev) {
		return nil, errf("InvalidParameterValue", "Value (%s) for parameter device is invalid. %s is not a valid EBS device name.", dev, dev)
	}
	if az != v.AZ {
		return nil, errf("InvalidVolume.ZoneMismatch",
			"The volume '%s' is not in the same availability zone as instance '%s'", volID, inst)
	}
	if v.Attachment != nil {
		return nil, errf("VolumeInUse", "%s is already attached to an instance", volID)
	}
	if v.State != "available" {
		return nil, errf("IncorrectState", "%s is %s", volID, v.State)
	}
	for _, o := range s.volumes {
		if o.Attachment != nil && o.Attachment.InstanceID == inst && o.Attachment.Device == dev {
			return nil, errf("InvalidParameterValue",
				"Invalid value '%s' for unixDevice. Attachment point %s is already in use", dev, dev)
		}
	}
	now := s.now()
	a := &Attachment{InstanceID: inst, Device: dev, State: "attaching", Time: now, attachedAt: now.Add(s.delays.Attach)}
	v.Attachment, v.State = a, "in-use"
	return xmlAttachment{VolumeID: volID, InstanceID: inst, Device: dev, Status: a.State,
		AttachTime: a.Time.UTC().Format(timeFormat)}, nil
}

func (s *Server) describeSnapshots(region string, f form) (any, *apiError) {
	ids := f.list("SnapshotId")
	owners := f.list("Owner")
	filters := f.filters()
	for name := range filters {
		switch name {
		case "status", "volume-id", "owner-id", "tag-key", "snapshot-id":
		default:
			if len(name) < 5 || name[:4] != "tag:" {
				return nil, errf("InvalidParameterValue", "The filter '%s' is invalid", name)
			}
		}
	}
	for _, id := range ids {
		if sn := s.snapshots[id]; sn == nil || sn.Region != region {
			return nil, errf("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.", id)
		}
	}
	pg, aerr := f.page(len(ids) > 0, "snapshot IDs", 1000)
	if aerr != nil {
		return nil, aerr
	}
	var snaps []*Snapshot
	for _, sn := range s.snapshots {
		if sn.Region != region || (len(ids) > 0 && !contains(ids, sn.ID)) || !matchTags(sn.Tags, filters) {
			continue
		}
		if len(owners) > 0 && !contains(owners, sn.Owner) && !(contains(owners, "self") && sn.Owner == Account) {
			continue
		}
		ok := true
		for name, vals := range filters {
			var have string
			switch name {
			case "status":
				have = sn.State
			case "volume-id":
				have = sn.VolumeID
			case "owner-id":
				have = sn.Owner
			case "snapshot-id":
				have = sn.ID
			default:
				continue
			}
			if !contains(vals, have) {
				ok = false
			}
		}
		if ok {
			snaps = append(snaps, sn)
		}
	}
	slices.SortFunc(snaps, func(a, b *Snapshot) int { return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.ID, b.ID)) })
	snaps, next, aerr := paginate(snaps, pg)
	if aerr != nil {
		return nil, aerr
	}
	out := struct {
		Snapshots []xmlSnapshot `xml:"snapshotSet>item"`
		NextToken string        `xml:"nextToken,omitempty"`
	}{NextToken: next}
	for _, sn := range snaps {
		out.Snapshots = append(out.Snapshots, s.snapXML(sn))
	}
	return out, nil
}

func (s *Server) createSnapshot(region string, f form) (any, *apiError) {
	volID := f.get("VolumeId")
	if volID == "" {
		return nil, errf("MissingParameter", "The request must contain the parameter volumeId")
	}
	v := s.volumes[volID]
	if v == nil || v.Region != region {
		return nil, errf("InvalidVolume.NotFound", "The volume '%s' does not exist.", volID)
	}
	if v.State == "creating" {
		return nil, errf("IncorrectState", "The volume '%s' is still being created", volID)
	}
	tags, aerr := f.tags("snapshot")
	if aerr != nil {
		return nil, aerr
	}
	now := s.now()
	sn := &Snapshot{ID: newID("snap"), Region: region, VolumeID: volID, VolumeSize: v.Size, State: "pending",
		Started: now, Description: f.get("Description"), Encrypted: v.Encrypted, Owner: Account, Tags: tags,
		completedAt: now.Add(s.delays.Snapshot)}
	s.snapshots[sn.ID] = sn
	return s.snapXML(sn), nil
}

func (s *Server) deleteSnapshot(region string, f form) (any, *apiError) {
	id := f.get("SnapshotId")
	if id == "" {
		return nil, errf("MissingParameter", "The request must contain the parameter snapshotId")
	}
	sn := s.snapshots[id]
	if sn == nil || sn.Region != region {
		return nil, errf("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.", id)
	}
	delete(s.snapshots, id)
	return struct {
		Return bool `xml:"return"`
	}{true}, nil
}

// String describes a volume for test failure messages.
func (v Volume) String() string {
	att := "-"
	if v.Attachment != nil {
		att = v.Attachment.InstanceID + ":" + v.Attachment.State
	}
	return fmt.Sprintf("%s(%s %s snap=%s att=%s)", v.ID, v.AZ, v.State, v.SnapshotID, att)
}

// page is a request's pagination: MaxResults (0: all results in one page) and where NextToken says to go on.
type page struct {
	max, offset int
}

// page reads MaxResults and NextToken. EC2 refuses MaxResults together with explicit ids, and outside [5, most].
func (f form) page(withIDs bool, ids string, most int) (page, *apiError) {
	var p page
	if m := f.get("MaxResults"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 5 || n > most {
			return p, errf("InvalidParameterValue", "Value ( %s ) for parameter maxResults is invalid. Expecting a value between 5 and %d.", m, most)
		}
		if withIDs {
			return p, errf("InvalidParameterCombination", "The parameter %s cannot be used with the parameter maxResults", ids)
		}
		p.max = n
	}
	if t := f.get("NextToken"); t != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(t, tokenPrefix))
		if !strings.HasPrefix(t, tokenPrefix) || err != nil || n < 0 {
			return p, errf("InvalidPaginationToken", "Invalid pagination token: %s", t)
		}
		p.offset = n
	}
	return p, nil
}

// tokenPrefix starts the server's (opaque to clients) pagination tokens.
const tokenPrefix = "ec2test-page-"

// paginate cuts one page out of the sorted results, with the token of the next page ("" for the last).
func paginate[T any](all []T, p page) ([]T, string, *apiError) {
	if p.offset > len(all) {
		return nil, "", errf("InvalidPaginationToken", "Invalid pagination token: %s%d", tokenPrefix, p.offset)
	}
	all = all[p.offset:]
	if p.max == 0 || len(all) <= p.max {
		return all, "", nil
	}
	return all[:p.max], tokenPrefix + strconv.Itoa(p.offset+p.max), nil
}

type xmlInstanceState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlInstance struct {
	InstanceID       string           `xml:"instanceId"`
	State            xmlInstanceState `xml:"instanceState"`
	PrivateIPAddress string           `xml:"privateIpAddress,omitempty"`
	AvailabilityZone string           `xml:"placement>availabilityZone"`
	Tags             []xmlTag         `xml:"tagSet>item,omitempty"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

// instanceStateCodes are EC2's codes for the instance states (the low byte of instanceState.code).
var instanceStateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
	"stopping": 64, "stopped": 80}

func (s *Server) describeInstances(region string, f form) (any, *apiError) {
	ids := f.list("InstanceId")
	filters := f.filters()
	for name := range filters {
		switch name {
		case "instance-id", "instance-state-name", "availability-zone", "private-ip-address", "tag-key":
		default:
			if !strings.HasPrefix(name, "tag:") {
				return nil, errf("InvalidParameterValue", "The filter '%s' is invalid", name)
			}
		}
	}
	for _, id := range ids {
		if in := s.instances[id]; in == nil || regionOf(in.AZ) != region {
			return nil, errf("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
		}
	}
	pg, aerr := f.page(len(ids) > 0, "instanceIds", 1000)
	if aerr != nil {
		return nil, aerr
	}
	var found []*Instance
	for _, in := range s.instances {
		if regionOf(in.AZ) != region || (len(ids) > 0 && !contains(ids, in.ID)) || !matchTags(in.Tags, filters) {
			continue
		}
		ok := true
		for name, vals := range filters {
			var have string
			switch name {
			case "instance-id":
				have = in.ID
			case "instance-state-name":
				have = in.State
			case "availability-zone":
				have = in.AZ
			case "private-ip-address":
				have = in.PrivateIP
			default:
				continue
			}
			if !contains(vals, have) {
				ok = false
			}
		}
		if ok {
			found = append(found, in)
		}
	}
	slices.SortFunc(found, func(a, b *Instance) int { return cmp.Compare(a.ID, b.ID) })
	found, next, aerr := paginate(found, pg)
	if aerr != nil {
		return nil, aerr
	}
	// One reservation per instance, as instances launched one at a time have.
	out := struct {
		Reservations []xmlReservation `xml:"reservationSet>item"`
		NextToken    string           `xml:"nextToken,omitempty"`
	}{NextToken: next}
	for _, in := range found {
		out.Reservations = append(out.Reservations, xmlReservation{
			ReservationID: "r-" + strings.TrimPrefix(in.ID, "i-"), OwnerID: Account,
			Instances: []xmlInstance{{InstanceID: in.ID, State: xmlInstanceState{instanceStateCodes[in.State], in.State},
				PrivateIPAddress: in.PrivateIP, AvailabilityZone: in.AZ, Tags: xmlTags(in.Tags)}},
		})
	}
	return out, nil
}
